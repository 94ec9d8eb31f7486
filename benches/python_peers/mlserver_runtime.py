"""MLServer custom runtime serving the shipped wine-quality model over the Open Inference
Protocol v2: input `features` (FP32 or FP64, [N, 11], columns in model.json's order) ->
output `quality` (FP32, [N]), one numpy forward pass per request.

    PYTHONPATH=benches/python_peers mlserver start benches/python_peers/mlserver

`parameters.uri` in model-settings.json is the model directory (model.json +
model.safetensors).
"""

import numpy as np
from mlserver import MLModel
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from mlserver.utils import get_model_uri

from wine_model import WineModel

DTYPES = {"FP32": np.float32, "FP64": np.float64}


class WineQualityRuntime(MLModel):
    async def load(self) -> bool:
        self.model = WineModel(await get_model_uri(self.settings))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = [i for i in payload.inputs if i.name == "features"]
        if len(inputs) != 1:
            raise InferenceError("expected one input named `features`")
        tensor = inputs[0]
        width = len(self.model.features)
        if tensor.datatype not in DTYPES or len(tensor.shape) != 2 or tensor.shape[1] != width:
            raise InferenceError(f"`features` must be FP32 or FP64 [N, {width}]")
        data = tensor.data.root if hasattr(tensor.data, "root") else tensor.data
        rows = np.asarray(data, dtype=DTYPES[tensor.datatype]).reshape(tensor.shape)
        out = self.model.predict(rows)
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.model.version,
            outputs=[ResponseOutput(name="quality", shape=[len(out)], datatype="FP32",
                                    data=out.tolist())],
        )
