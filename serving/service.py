"""The TumorOps BentoML service: classifies brain MRI slices with the model in production.

The model comes from S3 only, through `models/<name>/production.json`; the service polls that pointer and swaps
in a new release once it is downloaded, verified and warmed up. `/readyz` is false until a model is loaded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, ServiceUnavailable
from bentoml.validators import ContentType
from pydantic import BaseModel, Field

from infra.settings import load_settings
from infra.storage import ObjectStore
from serving.loader import LoadedModel, load_release, newer_pointer
from tumor_model.preprocessing import ImageDecodeError, ImageTooLargeError, preprocess_bytes

logger = logging.getLogger("tumorops.serving")


class Classification(BaseModel):
    """The answer for one image."""

    label: str = Field(description="most probable class")
    confidence: float = Field(description="probability of that class")
    probabilities: dict[str, float] = Field(description="probability per class")
    model_version: str = Field(description="registered model version that answered")


@bentoml.service(workers=1, traffic={"timeout": 60})
class TumorClassifier:
    """Brain-tumour MRI classifier (glioma, meningioma, no tumour, pituitary)."""

    def __init__(self) -> None:
        self.settings = load_settings()
        self.store = ObjectStore.from_settings(self.settings)
        self.cache_dir = self.settings.home_dir / "serving" / "releases"
        self.current: LoadedModel | None = None
        self._refresh_lock = threading.Lock()
        self._poller: asyncio.Task[None] | None = None

    @bentoml.on_startup
    async def start_polling(self) -> None:
        self._poller = asyncio.create_task(self._poll_forever())

    @bentoml.on_shutdown
    async def stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.to_thread(self.refresh)
            await asyncio.sleep(self.settings.serving_poll_seconds)

    def refresh(self) -> str | None:
        """Load the production release if it changed; keep serving the current model when that fails."""
        with self._refresh_lock:
            try:
                pointer = newer_pointer(self.store, self.settings.model_name, self.current)
                if pointer is None:
                    return None
                logger.info("loading release %s from %s", pointer["version"], pointer["prefix"])
                loaded = load_release(self.store, pointer, self.cache_dir)
            except Exception:
                # The poll must survive S3 outages and bad releases; the error is logged with its traceback.
                logger.exception("could not load the production release; still serving %s", self.version_or_none())
                return None
            self.current = loaded  # one reference swap: requests see the old or the new model, never a mix
            logger.info("now serving version %s", loaded.version)
            return loaded.version

    def version_or_none(self) -> str | None:
        return self.current.version if self.current else None

    def __is_ready__(self) -> bool:
        return self.current is not None

    @bentoml.api
    def classify(self, image: Annotated[Path, ContentType("image/*")]) -> Classification:
        """Classify one uploaded MRI slice (JPEG or PNG)."""
        model = self.current
        if model is None:
            raise ServiceUnavailable("no model is loaded yet: nothing has been promoted to production")
        data = Path(image).read_bytes()
        if not data:
            raise InvalidArgument("the uploaded file is empty")
        try:
            pixels = preprocess_bytes(data, image_size=model.image_size)
        except ImageTooLargeError as error:
            raise BentoMLException(str(error), error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from error
        except ImageDecodeError as error:
            raise InvalidArgument(f"the upload is not a readable JPEG or PNG image: {error}") from error
        probabilities = model.predict(pixels[np.newaxis])[0]
        best = int(np.argmax(probabilities))
        return Classification(
            label=model.labels[best],
            confidence=float(probabilities[best]),
            probabilities={label: float(p) for label, p in zip(model.labels, probabilities, strict=True)},
            model_version=model.version,
        )
