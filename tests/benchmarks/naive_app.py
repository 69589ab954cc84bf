"""The naive baseline of `bench_serving`: a minimal FastAPI app calling Keras `model.predict` once per request.

Run: `TUMOROPS_NAIVE_MODEL=model.keras uvicorn tests.benchmarks.naive_app:app --port 8000`.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np
from fastapi import FastAPI, UploadFile

from tumor_model.preprocessing import preprocess_bytes

app = FastAPI()


@cache
def _model() -> Any:
    import keras

    return keras.saving.load_model(os.environ["TUMOROPS_NAIVE_MODEL"], compile=False)


@app.post("/classify")
async def classify(image: UploadFile) -> dict[str, Any]:
    model = _model()
    pixels = preprocess_bytes(await image.read(), image_size=int(model.inputs[0].shape[1]))
    probabilities = model.predict(pixels[np.newaxis], verbose=0)[0]
    return {"label": int(np.argmax(probabilities)), "confidence": float(np.max(probabilities))}
