"""The TumorOps BentoML service: classifies brain MRI slices with the model in production.

The model comes from S3 only, through `models/<name>/production.json`. A background poll (every
`TUMOROPS_SERVING_POLL_SECONDS`) and `POST /admin/reload` load a new release: download, sha256 check of every file,
load, runtime choice (the fastest here of the exports that passed parity at release time), warm-up, then one
reference swap. A release that fails any step is refused and logged, and the service keeps serving what it has.
`/readyz` is false until a model is loaded.

Single images go through BentoML's adaptive batcher: `/classify` decodes and checks the upload itself (so a bad
one gets its own 4xx), parks the pixels in this process and sends only a key through the batchable
`/batched_inference` route, where concurrent requests meet in one model call. The key reaches that route's batcher
in-process (`_DirectBatcher`), not through BentoML's own HTTP client: on 2 cores the HTTP round trip cost a tenth
of the CPU that inference needs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from bentoml.validators import ContentType
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infra.release import ReleaseVerificationError, read_pointer
from infra.settings import load_settings
from infra.storage import ObjectStore
from serving import metrics
from serving.guard import RequestGuard
from serving.loader import LoadedModel, ReleaseLoadError, load_release
from serving.uploads import ImageUpload, UploadRejected, checked_upload
from tumor_model.preprocessing import ImageDecodeError, ImageTooLargeError, decode_image, preprocess_image

logger = logging.getLogger("tumorops.serving")

INFERENCE_ATTEMPTS = 3
UPLOAD_PATHS = frozenset({"/classify", "/classify_batch", "/explain"})
ImageField = Annotated[ImageUpload, Field(description="an MRI slice: JPEG, PNG or DICOM")]


class Classification(BaseModel):
    """The answer for one image."""

    label: str = Field(description="most probable class")
    confidence: float = Field(description="probability of that class")
    probabilities: dict[str, float] = Field(description="probability per class")
    refer_to_radiologist: bool = Field(description="confidence is under the release's referral threshold")
    referral_threshold: float = Field(description="the release's referral threshold")
    model_version: str = Field(description="registered model version that answered")


class BatchItem(BaseModel):
    """One image of a batch call: its classification, or why it was refused."""

    filename: str
    status: int = Field(description="200, or the HTTP status the image alone would have got")
    classification: Classification | None = None
    error: str | None = None


class BatchClassification(BaseModel):
    """The answers for a batch upload, in upload order."""

    results: list[BatchItem]
    classified: int
    refused: int


class ModelInfo(BaseModel):
    """What is serving: version, release metadata and runtime."""

    model_version: str
    labels: list[str]
    image_size: int
    runtime: str
    runtime_reason: str
    referral_threshold: float
    dataset_version: str | None
    promoted_at: str | None
    approved_by: str | None
    metrics: dict[str, Any]
    runtimes: dict[str, Any]


class ReloadResult(BaseModel):
    """Outcome of a reload: whether a new release was swapped in, and what serves now."""

    reloaded: bool
    model_version: str | None
    message: str


def _log_release_events() -> None:
    """Release loads, swaps and refusals reach BentoML's log handlers (the default WARNING level hides them)."""
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


BATCHED_ROUTE = "batched_inference"


def _direct_batcher(ctx: bentoml.Context) -> Callable[..., Awaitable[Any]] | None:
    """BentoML's adaptive batcher of `batched_inference`, reached from a request's own endpoint, or None.

    BentoML 1.4 serves each API through `ServiceAppFactory.api_endpoint_wrapper` and batches through its
    `batch_infer`; calling that skips the HTTP client round trip that `self.to_async` makes. None when a BentoML
    release lays this out differently: the caller then goes through `self.to_async`.
    """
    endpoint = ctx.request.scope.get("endpoint")
    factory = getattr(getattr(endpoint, "func", None), "__self__", None)
    batch_infer = getattr(factory, "batch_infer", None)
    if batch_infer is None or BATCHED_ROUTE not in getattr(factory, "dispatchers", {}):
        return None
    return functools.partial(batch_infer, BATCHED_ROUTE)


class Overloaded(RuntimeError):
    """The adaptive batcher refused work it could not finish within its latency bound."""


NO_MODEL = "no model is loaded yet: nothing has been promoted to production"
OVERLOADED = "the service is overloaded: retry shortly"


def _error(status: int, message: str, ctx: bentoml.Context | None = None) -> JSONResponse:
    """An error answer. Methods that take `ctx` must pass it: BentoML answers with `ctx.response.status_code`."""
    if ctx is not None:
        ctx.response.status_code = status
    headers = {"Retry-After": "1"} if status == HTTPStatus.SERVICE_UNAVAILABLE else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _model_info_endpoint(request: Request) -> Response:
    service = bentoml.get_current_service()
    info = service.model_info() if service is not None else None
    if info is None:
        return _error(HTTPStatus.SERVICE_UNAVAILABLE, NO_MODEL)
    return JSONResponse(info.model_dump())


# GET routes: BentoML API methods are POST only.
_get_routes = Starlette(routes=[Route("/model", _model_info_endpoint, methods=["GET"])])


@bentoml.asgi_app(_get_routes, path="/")
# One batch at a time: the runtime splits each batch into one part per core (`TUMOROPS_SERVING_LANES`).
@bentoml.service(workers=1, threads=1, traffic={"timeout": 120, "max_concurrency": 256})
class TumorClassifier:
    """Brain-tumour MRI classifier (glioma, meningioma, no tumour, pituitary)."""

    def __init__(self) -> None:
        _log_release_events()
        self.settings = load_settings()
        self.store = ObjectStore.from_settings(self.settings)
        self.cache_dir = self.settings.home_dir / "serving" / "releases"
        self.current: LoadedModel | None = None
        self._refresh_lock = threading.Lock()
        self._refused_release: str | None = None  # model.json sha256 of the last refused release
        self._pending: dict[str, tuple[LoadedModel, np.ndarray]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._batcher: Callable[..., Awaitable[Any]] | None = None
        self._batcher_looked_up = False

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

    def refresh(self, *, force: bool = False) -> ReloadResult:
        """Load the production release if it changed; keep serving the current model when that fails.

        Args:
            force: try again a release refused earlier (the poll skips it until production.json changes).
        """
        with self._refresh_lock:
            serving = self.version_or_none()
            try:
                pointer = read_pointer(self.store, self.settings.model_name)
            except Exception as error:  # an S3 outage must not stop the poll: logged, retried next time
                logger.exception("cannot read production.json; still serving %s", serving)
                message = f"cannot read production.json: {error}"
                return ReloadResult(reloaded=False, model_version=serving, message=message)
            if pointer is None:
                return ReloadResult(reloaded=False, model_version=serving, message="nothing is promoted yet")
            release = pointer.get("model_json_sha256")
            if self.current is not None and self.current.pointer.get("model_json_sha256") == release:
                return ReloadResult(reloaded=False, model_version=serving, message=f"already serving {serving}")
            if release == self._refused_release and not force:
                return ReloadResult(
                    reloaded=False,
                    model_version=serving,
                    message=f"release {pointer['version']} was refused; still serving {serving}",
                )
            logger.info("loading release %s from %s", pointer["version"], pointer["prefix"])
            try:
                loaded = load_release(
                    self.store,
                    pointer,
                    self.cache_dir,
                    runtime=self.settings.serving_runtime,
                    lanes=self.settings.serving_lanes,
                )
            except (ReleaseVerificationError, ReleaseLoadError) as error:
                self._refused_release = release
                metrics.RELEASES_REFUSED.inc()
                logger.error("refused release %s: %s; still serving %s", pointer["version"], error, serving)
                return ReloadResult(
                    reloaded=False,
                    model_version=serving,
                    message=f"refused release {pointer['version']}: {error}; still serving {serving}",
                )
            except Exception as error:  # S3 outage mid-download: transient, retried by the next poll
                logger.exception("could not load release %s; still serving %s", pointer["version"], serving)
                return ReloadResult(
                    reloaded=False, model_version=serving, message=f"could not load {pointer['version']}: {error}"
                )
            self.current = loaded  # one reference swap: a request sees the old or the new model, never a mix
            self._refused_release = None
            metrics.RELEASES_LOADED.labels(model_version=loaded.version).inc()
            logger.info("now serving version %s with %s (was %s)", loaded.version, loaded.runtime, serving)
            return ReloadResult(
                reloaded=True, model_version=loaded.version, message=f"now serving {loaded.version} (was {serving})"
            )

    def version_or_none(self) -> str | None:
        return self.current.version if self.current else None

    def __is_ready__(self) -> bool:
        return self.current is not None

    def __metrics__(self, text: str) -> str:
        model = self.current
        return text + metrics.model_info_lines(
            version=model.version if model else None, runtime=model.runtime if model else None
        )

    def model_info(self) -> ModelInfo | None:
        model = self.current
        if model is None:
            return None
        return ModelInfo(
            model_version=model.version,
            labels=list(model.labels),
            image_size=model.image_size,
            runtime=model.runtime,
            runtime_reason=model.runtime_reason,
            referral_threshold=model.referral_confidence,
            dataset_version=model.info.get("dataset_version"),
            promoted_at=model.pointer.get("promoted_at"),
            approved_by=model.pointer.get("approved_by"),
            metrics=model.info.get("evaluation") or model.info.get("metrics") or {},
            runtimes={
                name: {k: v for k, v in figures.items() if k != "files"}
                for name, figures in (model.info.get("runtimes") or {}).items()
            },
        )

    # --- decoding -------------------------------------------------------------------------------------------

    def _pixels(self, upload: ImageUpload, model: LoadedModel) -> np.ndarray:
        """The model input for one upload. Raises (and counts) `UploadRejected` with the status to answer."""
        try:
            data = checked_upload(upload, max_bytes=self.settings.serving_max_upload_bytes)
            try:
                image = decode_image(data, max_pixels=self.settings.serving_max_image_pixels)
            except ImageTooLargeError as error:
                raise UploadRejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{upload.name}: {error}") from error
            except ImageDecodeError as error:
                raise UploadRejected(HTTPStatus.BAD_REQUEST, f"{upload.name}: {error}") from error
        except UploadRejected as rejected:
            metrics.REJECTED_UPLOADS.labels(status=str(rejected.status)).inc()
            raise
        return preprocess_image(image, image_size=model.image_size)

    def _classification(self, model: LoadedModel, probabilities: list[float]) -> Classification:
        best = int(np.argmax(probabilities))
        confidence = float(probabilities[best])
        threshold = model.referral_confidence
        return Classification(
            label=model.labels[best],
            confidence=confidence,
            probabilities={label: float(p) for label, p in zip(model.labels, probabilities, strict=True)},
            refer_to_radiologist=confidence < threshold,
            referral_threshold=threshold,
            model_version=model.version,
        )

    async def _infer(self, items: list[tuple[LoadedModel, np.ndarray]], ctx: bentoml.Context) -> list[list[float]]:
        """Probabilities for decoded images, through the adaptive batcher (keys travel, pixels stay here)."""
        if not self._batcher_looked_up:
            self._batcher, self._batcher_looked_up = _direct_batcher(ctx), True
            how = "in-process" if self._batcher else "through BentoML's HTTP client (in-process call not found)"
            logger.info("adaptive batcher of %s reached %s", BATCHED_ROUTE, how)
        keys = [uuid.uuid4().hex for _ in items]
        self._pending.update(zip(keys, items, strict=True))
        try:
            answers = await self._batched(keys)
        except ServiceUnavailable as error:  # the batcher shed load: the client may retry
            raise Overloaded(str(error)) from error
        finally:
            for key in keys:
                self._pending.pop(key, None)
        missing = [a["error"] for a in answers if "error" in a]
        if missing:
            raise RuntimeError(f"batched inference failed: {missing[0]}")
        return [a["probabilities"] for a in answers]

    async def _batched(self, keys: list[str]) -> list[dict[str, Any]]:
        if self._batcher is not None:
            return await self._batcher((keys,), {})
        for attempt in range(1, INFERENCE_ATTEMPTS + 1):
            try:
                return await self.to_async.batched_inference(keys=keys)  # type: ignore[attr-defined]
            except aiohttp.ClientError as error:
                # The in-process connection can drop under heavy load; the parked pixels are still here.
                if attempt == INFERENCE_ATTEMPTS:
                    raise
                logger.warning("in-process batch call failed (%s), retrying", type(error).__name__)
                await asyncio.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    # --- API ------------------------------------------------------------------------------------------------

    # The latency bound only sheds load (503) when the queue cannot drain in time; a low one sheds work that a
    # slow CPU would have finished, so it sits close to the traffic timeout. Batches of 8 leave the next requests
    # decoding while a batch runs (EfficientNetB3 at 300 px, 16 clients, 2 cores: 8 beat 4 and 32).
    @bentoml.api(batchable=True, max_batch_size=8, max_latency_ms=30_000)
    def batched_inference(self, keys: list[str]) -> list[dict[str, Any]]:
        """Internal: runs images parked by `/classify` and `/classify_batch` in one model call per release."""
        results: list[dict[str, Any]] = [{"error": "unknown key: this route only serves this process"}] * len(keys)
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            if key in self._pending:
                groups.setdefault(id(self._pending[key][0]), []).append(index)
        for indices in groups.values():
            # Images decoded for one release are answered by that release, even if a swap happened meanwhile.
            model = self._pending[keys[indices[0]]][0]
            batch = np.stack([self._pending[keys[i]][1] for i in indices])
            with metrics.INFERENCE_SECONDS.time():
                probabilities = model.predict(batch)
            metrics.BATCH_SIZE.observe(len(indices))
            for i, row in zip(indices, probabilities, strict=True):
                results[i] = {"probabilities": [float(p) for p in row]}
        return results

    @bentoml.api
    async def classify(self, image: ImageField, ctx: bentoml.Context) -> Classification:
        """Classify one MRI slice (JPEG, PNG or DICOM upload, field `image`).

        Returns the label, the probability of every class, the model version, and `refer_to_radiologist` when the
        confidence is under the release's threshold. 415: not JPEG, PNG or DICOM; 400: empty, truncated or
        undecodable; 413: too many bytes or pixels; 503: no model is loaded yet.
        """
        model = self.current
        if model is None:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, NO_MODEL, ctx)
        try:
            pixels = await asyncio.to_thread(self._pixels, image, model)
        except UploadRejected as rejected:
            return _error(rejected.status, str(rejected), ctx)
        try:
            [probabilities] = await self._infer([(model, pixels)], ctx)
        except Overloaded:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, OVERLOADED, ctx)
        answer = self._classification(model, probabilities)
        self._count([answer])
        return answer

    @bentoml.api
    async def classify_batch(self, images: list[ImageField], ctx: bentoml.Context) -> BatchClassification:
        """Classify several MRI slices in one call (repeat the multipart field `images`).

        Each image gets its own result in upload order; a refused image carries the status it would have got
        alone and the reason, and does not fail the others.
        """
        model = self.current
        if model is None:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, NO_MODEL, ctx)
        if not images:
            return _error(HTTPStatus.BAD_REQUEST, "no images: send one or more files in the field `images`", ctx)
        limit = self.settings.serving_max_batch_images
        if len(images) > limit:
            message = f"{len(images)} images is over the limit of {limit}"
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message, ctx)
        items: list[BatchItem] = []
        decoded: list[tuple[int, np.ndarray]] = []
        for index, upload in enumerate(images):
            try:
                decoded.append((index, await asyncio.to_thread(self._pixels, upload, model)))
                items.append(BatchItem(filename=upload.name, status=HTTPStatus.OK))
            except UploadRejected as rejected:
                items.append(BatchItem(filename=upload.name, status=rejected.status, error=str(rejected)))
        if decoded:
            try:
                answers = await self._infer([(model, pixels) for _, pixels in decoded], ctx)
            except Overloaded:
                return _error(HTTPStatus.SERVICE_UNAVAILABLE, OVERLOADED, ctx)
            for (index, _), probabilities in zip(decoded, answers, strict=True):
                items[index].classification = self._classification(model, probabilities)
            self._count([items[index].classification for index, _ in decoded])
        return BatchClassification(results=items, classified=len(decoded), refused=len(items) - len(decoded))

    @bentoml.api
    async def explain(self, image: ImageField) -> Annotated[Path, ContentType("image/png")]:
        """Grad-CAM: a PNG of the slice with the regions that drove the prediction in warm colours.

        The predicted label, its confidence and the model version come in the `X-Label`, `X-Confidence` and
        `X-Model-Version` headers.
        """
        model = self.current
        if model is None:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, NO_MODEL)
        try:
            pixels = await asyncio.to_thread(self._pixels, image, model)
        except UploadRejected as rejected:
            return _error(rejected.status, str(rejected))
        png, answer = await asyncio.to_thread(self._explain, model, pixels)
        return Response(
            png,
            media_type="image/png",
            headers={
                "X-Label": answer.label,
                "X-Confidence": f"{answer.confidence:.6f}",
                "X-Model-Version": answer.model_version,
                "X-Refer-To-Radiologist": str(answer.refer_to_radiologist).lower(),
            },
        )

    def _explain(self, model: LoadedModel, pixels: np.ndarray) -> tuple[bytes, Classification]:
        from tumor_model.explain import overlay_png

        explanation = model.explainer().explain(pixels)
        answer = self._classification(model, [float(p) for p in explanation.probabilities])
        return overlay_png(pixels, explanation.heatmap), answer

    @bentoml.api(route="/admin/reload")
    async def admin_reload(self) -> ReloadResult:
        """Load the production release now, even one refused before (needs the bearer token)."""
        return await asyncio.to_thread(self.refresh, force=True)

    def _count(self, answers: list[Classification | None]) -> None:
        for answer in answers:
            if answer is None:
                continue
            metrics.PREDICTIONS.labels(label=answer.label, model_version=answer.model_version).inc()
            if answer.refer_to_radiologist:
                metrics.REFERRALS.labels(model_version=answer.model_version).inc()


class ConfiguredRequestGuard(RequestGuard):
    """`RequestGuard` configured from the settings when BentoML builds the app (in each worker, not at import)."""

    def __init__(self, app: Any) -> None:
        settings = load_settings()
        super().__init__(
            app,
            token=settings.serving_token.get_secret_value() if settings.serving_token else None,
            max_body_bytes=settings.serving_max_request_bytes,
            upload_paths=UPLOAD_PATHS,
            internal_paths=frozenset({"/batched_inference"}),
        )


TumorClassifier.add_asgi_middleware(ConfiguredRequestGuard)
