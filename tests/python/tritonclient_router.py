#!/usr/bin/env python3
"""Acceptance check: NVIDIA's `tritonclient.http`, with its defaults (binary tensors both
ways), through the abgate router, with the same sticky assignment as `/predict`.

    python3 tritonclient_router.py http://127.0.0.1:8080 wine-quality

For several users: health, readiness and metadata calls through the router, then
`infer` with `X-User-Id`, FP32 and FP64, binary on and off; every prediction must be
the very f32 that `/predict` through the router answers for the same user and rows (the
two arms are different models, so equal answers mean the same arm), and a raw infer
request must carry the `X-Variant` that `/predict` gave the user. Exits non-zero on the
first failure; prints "all checks passed" at the end.
"""

import csv
import json
import pathlib
import sys
import urllib.request

import numpy as np
import tritonclient.http as httpclient

BASE, MODEL = sys.argv[1].rstrip("/"), sys.argv[2]
CSV = pathlib.Path(__file__).resolve().parents[2] / "data" / "winequality-red.csv"


def post(path, body, headers):
    req = urllib.request.Request(BASE + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read()), resp.headers


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


with open(CSV, newline="") as f:
    reader = csv.reader(f)
    names = [h.strip().replace(" ", "_").lower() for h in next(reader)][:11]
    rows = [[float(x) for x in row[:11]] for _, row in zip(range(8), reader)]

client = httpclient.InferenceServerClient(url=BASE.removeprefix("http://"))
check(client.is_server_live(), "is_server_live through the router")
check(client.is_server_ready(), "is_server_ready through the router")
check(client.is_model_ready(MODEL), "is_model_ready through the router")
check(client.get_server_metadata()["name"] == "abgate", "server metadata through the router")
meta = client.get_model_metadata(MODEL)
order = meta["parameters"]["features"]
batch = np.array([[row[names.index(f)] for f in order] for row in rows], dtype=np.float64)

arms = set()
for i in range(12):
    user = f"oip-user-{i}"
    headers = {"X-User-Id": user}
    answer, predict_headers = post("/predict", {"instances": [dict(zip(names, r)) for r in rows]},
                                   headers)
    arm = predict_headers["X-Variant"]
    arms.add(arm)
    expected = np.array(answer["predictions"], dtype=np.float32)
    for dtype, np_type in (("FP32", np.float32), ("FP64", np.float64)):
        for binary in (True, False):
            tensor = httpclient.InferInput("features", list(batch.shape), dtype)
            tensor.set_data_from_numpy(batch.astype(np_type), binary_data=binary)
            out = [httpclient.InferRequestedOutput("quality", binary_data=binary)]
            # A fresh dict each call: tritonclient adds Inference-Header-Content-Length
            # to the dict it is given.
            got = client.infer(MODEL, [tensor], outputs=out,
                               headers=dict(headers)).as_numpy("quality")
            check(np.array_equal(got.view(np.uint32), expected.view(np.uint32)),
                  f"{user} ({arm}) infer {dtype} binary={binary} equals /predict")
    raw, raw_headers = post(f"/v2/models/{MODEL}/infer",
                            {"inputs": [{"name": "features", "shape": [1, 11], "datatype": "FP32",
                                         "data": [float(x) for x in batch[0]]}]}, headers)
    check(raw_headers["X-Variant"] == arm, f"{user}: infer served by {arm}, the sticky arm")
check(len(arms) == 2, f"the users reached both arms: {arms}")
print("all checks passed")
