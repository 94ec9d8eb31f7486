#!/usr/bin/env python3
"""Acceptance check: the KServe Python SDK's REST client (`kserve.InferenceRESTClient`,
protocol v2) against one abgate arm.

    python3 kserve_arm.py http://127.0.0.1:6001 wine-quality best_model

Checks liveness and readiness, then `infer` with FP32 and FP64 inputs sent as JSON and
as binary tensor data, with JSON and binary outputs, and asserts that every prediction
is the very f32 `/predict` answers for the same rows, that the response `id` is the
request's and that `X-Variant` names the arm. Prints "all checks passed" at the end.
"""

import asyncio
import csv
import json
import pathlib
import sys
import urllib.request

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

BASE, MODEL, VARIANT = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
CSV = pathlib.Path(__file__).resolve().parents[3] / "data" / "winequality-red.csv"


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


def predict(names, rows):
    body = {"instances": [dict(zip(names, row)) for row in rows]}
    req = urllib.request.Request(
        BASE + "/predict", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return np.array(json.loads(resp.read())["predictions"], dtype=np.float32)


async def main():
    with open(CSV, newline="") as f:
        reader = csv.reader(f)
        names = [h.strip().replace(" ", "_").lower() for h in next(reader)][:11]
        rows = [[float(x) for x in row[:11]] for _, row in zip(range(7), reader)]
    expected = predict(names, rows)
    batch = np.array(rows, dtype=np.float64)

    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=10))
    check(await client.is_server_live(BASE), "is_server_live")
    check(await client.is_server_ready(BASE), "is_server_ready")
    check(await client.is_model_ready(BASE, MODEL), "is_model_ready")
    check(not await client.is_model_ready(BASE, "no-such-model"), "is_model_ready false for another model")

    for dtype, np_type in (("FP32", np.float32), ("FP64", np.float64)):
        for binary_in in (False, True):
            for binary_out in (False, True):
                what = f"infer {dtype} binary_in={binary_in} binary_out={binary_out}"
                tensor = InferInput("features", list(batch.shape), dtype)
                tensor.set_data_from_numpy(batch.astype(np_type), binary_data=binary_in)
                request = InferRequest(
                    model_name=MODEL,
                    infer_inputs=[tensor],
                    request_id=f"k-{dtype}-{binary_in}-{binary_out}",
                    request_outputs=[RequestedOutput("quality", parameters={"binary_data": binary_out})],
                )
                headers = {}
                response = await client.infer(BASE, request, model_name=MODEL, response_headers=headers)
                got = response.outputs[0].as_numpy()
                check(got.dtype == np.float32 and got.shape == (len(rows),), f"{what}: {got.dtype} {got.shape}")
                check(np.array_equal(got.view(np.uint32), expected.view(np.uint32)), f"{what}: {got} == /predict {expected}")
                check(response.id == request.id, f"{what}: id echoed")
                check(headers.get("x-variant") == VARIANT, f"{what}: X-Variant {headers.get('x-variant')}")
                binary = "inference-header-content-length" in headers
                check(binary == binary_out, f"{what}: binary output {binary}")
    await client.close()
    print("all checks passed")


asyncio.run(main())
