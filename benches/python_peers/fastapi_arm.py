"""The seed's kind of model server: FastAPI + uvicorn + prometheus_client, serving the
shipped model (weights from model.safetensors, normalization from model.json, numpy
forward pass), with the seed's metric names.

    ABGATE_MODEL_DIR=models/best_model ABGATE_VARIANT=best_model \
      uvicorn --app-dir benches/python_peers fastapi_arm:app --port 6101 --workers 2

POST /predict {"features": {...11 features...}} -> {"prediction", "variant",
"model_version", "prediction_id"}; {"instances": [{...}, ...]} -> {"predictions", ...};
POST /feedback; GET /metrics; GET /api/health. Each uvicorn worker has its own registry
(no prometheus_client multiprocess mode, as in the seed).
"""

import os
import time
import uuid
from typing import List, Literal, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from wine_model import WineModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_DIR = os.environ.get("ABGATE_MODEL_DIR", os.path.join(ROOT, "models", "best_model"))
VARIANT = os.environ.get("ABGATE_VARIANT", "best_model")
MODEL = WineModel(MODEL_DIR)

PREDICTIONS = Counter("predictions_total", "Prediction requests", ["endpoint", "variant"])
DURATION = Histogram("prediction_duration_seconds", "Prediction latency", ["variant"],
                     buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                              0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
ERRORS = Counter("prediction_errors_total", "Failed predictions", ["variant", "error_type"])
FEEDBACK = Counter("feedback_total", "Feedback received", ["variant", "feedback_type"])


class WineFeatures(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    fixed_acidity: float
    volatile_acidity: float
    citric_acid: float
    residual_sugar: float
    chlorides: float
    free_sulfur_dioxide: float
    total_sulfur_dioxide: float
    density: float
    ph: float
    sulphates: float
    alcohol: float


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: Optional[WineFeatures] = None
    instances: Optional[List[WineFeatures]] = Field(default=None, max_length=1024)


class FeedbackRequest(BaseModel):
    prediction_id: str
    feedback_type: Literal["rating", "accurate", "too_high", "too_low"]
    rating: Optional[int] = Field(default=None, ge=1, le=5)
    actual: Optional[float] = None


app = FastAPI(title="wine-quality (FastAPI peer)")


def error(status, kind, message):
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


@app.exception_handler(RequestValidationError)
async def invalid(request: Request, exc: RequestValidationError):
    if request.url.path == "/predict":
        ERRORS.labels(VARIANT, "validation").inc()
    return error(400, "validation", str(exc.errors()[:3]))


@app.post("/predict")
async def predict(req: PredictRequest):
    started = time.perf_counter()
    PREDICTIONS.labels("predict", VARIANT).inc()
    try:
        if (req.features is None) == (req.instances is None):
            ERRORS.labels(VARIANT, "validation").inc()
            return error(400, "validation", "send exactly one of `features` and `instances`")
        rows = [req.features] if req.features is not None else req.instances
        x = np.array([[getattr(r, f) for f in MODEL.features] for r in rows], dtype=np.float32)
        out = MODEL.predict(x).tolist()
        ids = [f"{VARIANT}-{uuid.uuid4().hex}" for _ in out]
        if req.features is not None:
            return {"prediction": out[0], "variant": VARIANT, "model_version": MODEL.version,
                    "prediction_id": ids[0]}
        return {"predictions": out, "prediction_ids": ids, "variant": VARIANT,
                "model_version": MODEL.version}
    finally:
        DURATION.labels(VARIANT).observe(time.perf_counter() - started)


@app.post("/feedback")
async def feedback(fb: FeedbackRequest):
    FEEDBACK.labels(VARIANT, fb.feedback_type).inc()
    return {"status": "recorded", "variant": VARIANT, "prediction_id": fb.prediction_id,
            "feedback_type": fb.feedback_type}


@app.get("/metrics")
async def metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@app.get("/api/health")
async def health():
    return {"status": "healthy", "variant": VARIANT, "model_version": MODEL.version}
