#!/usr/bin/env python3
"""Acceptance check: NVIDIA's `tritonclient.http`, used as its documentation shows and
with its defaults (binary tensors both ways), against one abgate arm.

    python3 tritonclient_arm.py http://127.0.0.1:6001 wine-quality best_model

Checks liveness, readiness, server and model metadata, then `infer` with FP32 and FP64
inputs, `binary_data` on and off for the input and for the output (and the client's
default of no requested outputs), and asserts that every prediction is the very f32
`/predict` answers for the same rows, that `id` is echoed and that `X-Variant` names the
arm. Exits non-zero on the first failure; prints "all checks passed" at the end.
"""

import csv
import json
import pathlib
import sys
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

BASE, MODEL, VARIANT = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
CSV = pathlib.Path(__file__).resolve().parents[3] / "data" / "winequality-red.csv"


def post(path, body, headers=None):
    req = urllib.request.Request(
        BASE + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read()), resp.headers


def wines(n):
    with open(CSV, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().replace(" ", "_").lower() for h in next(reader)][:11]
        return header, [[float(x) for x in row[:11]] for _, row in zip(range(n), reader)]


def predict(names, rows):
    """`/predict`'s answer for `rows` as float32 (one batch, or one row alone)."""
    objs = [dict(zip(names, row)) for row in rows]
    if len(rows) == 1:
        v, _ = post("/predict", {"features": objs[0]})
        return np.array([v["prediction"]], dtype=np.float32), v["model_version"]
    v, _ = post("/predict", {"instances": objs})
    return np.array(v["predictions"], dtype=np.float32), v["model_version"]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


client = httpclient.InferenceServerClient(url=BASE.removeprefix("http://"))

check(client.is_server_live(), "is_server_live")
check(client.is_server_ready(), "is_server_ready")
check(client.is_model_ready(MODEL), "is_model_ready")
check(not client.is_model_ready("no-such-model"), "is_model_ready is false for another model")

server = client.get_server_metadata()
check(server["name"] == "abgate", f"get_server_metadata name: {server}")
check("binary_tensor_data" in server["extensions"], "server lists binary_tensor_data")

meta = client.get_model_metadata(MODEL)
check(meta["name"] == MODEL, f"model metadata name: {meta['name']}")
inp, out = meta["inputs"][0], meta["outputs"][0]
check(
    (inp["name"], inp["datatype"], inp["shape"]) == ("features", "FP32", [-1, 11]),
    f"input metadata {inp}",
)
check((out["name"], out["datatype"], out["shape"]) == ("quality", "FP32", [-1]), f"output {out}")
version = meta["versions"][0]
check(client.is_model_ready(MODEL, model_version=version), "is_model_ready with version")
versioned = client.get_model_metadata(MODEL, model_version=version)
check(versioned["versions"] == [version], "versioned model metadata")

names, rows = wines(12)
order = meta["parameters"]["features"]
check(order == inp["parameters"]["features"], "feature order in metadata")
check(sorted(order) == sorted(names), f"metadata features {order} are the CSV's {names}")
# Columns in the order the metadata lists, whatever order the CSV has.
batch = np.array([[row[names.index(f)] for f in order] for row in rows], dtype=np.float64)

expected_batch, predict_version = predict(names, rows)
check(predict_version == version, "metadata version is /predict's model_version")
expected_one, _ = predict(names, rows[:1])

for dtype, np_type in (("FP32", np.float32), ("FP64", np.float64)):
    for binary_in in (True, False):
        for binary_out in (True, False, None):
            for data, expected in ((batch, expected_batch), (batch[:1], expected_one)):
                what = f"infer {dtype} N={len(data)} binary_in={binary_in} binary_out={binary_out}"
                tensor = httpclient.InferInput("features", list(data.shape), dtype)
                tensor.set_data_from_numpy(data.astype(np_type), binary_data=binary_in)
                outputs = (
                    None
                    if binary_out is None
                    else [httpclient.InferRequestedOutput("quality", binary_data=binary_out)]
                )
                request_id = f"req-{dtype}-{binary_in}-{binary_out}-{len(data)}"
                result = client.infer(MODEL, [tensor], outputs=outputs, request_id=request_id)
                got = result.as_numpy("quality")
                response = result.get_response()
                check(got.dtype == np.float32 and got.shape == (len(data),), f"{what}: {got.dtype} {got.shape}")
                check(np.array_equal(got.view(np.uint32), expected.view(np.uint32)), f"{what}: {got} == /predict {expected}")
                check(response["id"] == request_id, f"{what}: id echoed")
                check(response["model_version"] == version, f"{what}: model_version")
                sent_binary = "binary_data_size" in response["outputs"][0].get("parameters", {})
                check(sent_binary == (binary_out is not False), f"{what}: binary output {sent_binary}")

# The same rows through the versioned route.
tensor = httpclient.InferInput("features", list(batch.shape), "FP32")
tensor.set_data_from_numpy(batch.astype(np.float32))
got = client.infer(MODEL, [tensor], model_version=version).as_numpy("quality")
check(np.array_equal(got, expected_batch), "versioned infer")

# Errors come back as the protocol's {"error": ...} that tritonclient reports.
bad = httpclient.InferInput("features", [2, 10], "FP32")
bad.set_data_from_numpy(np.zeros((2, 10), dtype=np.float32))
try:
    client.infer(MODEL, [bad])
    check(False, "a [2, 10] tensor is refused")
except InferenceServerException as e:
    check(e.status() == "400" and "shape [2, 10]" in e.message(), f"shape error: {e.status()} {e.message()}")
try:
    client.infer("no-such-model", [tensor])
    check(False, "an unknown model is refused")
except InferenceServerException as e:
    check(e.status() == "404" and "unknown model" in e.message(), f"unknown model: {e.status()} {e.message()}")

# X-Variant names the arm (tritonclient does not expose response headers).
_, headers = post(
    f"/v2/models/{MODEL}/infer",
    {"inputs": [{"name": "features", "shape": [1, 11], "datatype": "FP64", "data": batch[0].tolist()}]},
)
check(headers["X-Variant"] == VARIANT, f"X-Variant {headers['X-Variant']}")

print("all checks passed")
