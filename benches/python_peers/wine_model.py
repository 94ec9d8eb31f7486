"""The shipped wine-quality model in numpy: the forward pass of model-server/src/model.rs.

`model.json` gives the feature order, the per-feature standardization
(`x' = (x - mean) / std`), the dense layers (`activation(x . W^T + b)`, relu / tanh /
identity) and the target scaling (`quality = y * std + mean`); `model.safetensors` holds
`layers.<i>.weight` ([outputs, inputs]) and `layers.<i>.bias` ([outputs]), all f32. The
arm folds biases into its matrices; that is the same arithmetic up to f32 rounding order.
"""

import json
import os

import numpy as np
from safetensors.numpy import load_file

ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, np.float32(0.0)),
    "tanh": np.tanh,
    "identity": lambda x: x,
}


class WineModel:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "model.json")) as f:
            spec = json.load(f)
        self.spec = spec
        self.name = spec["name"]
        self.version = spec["version"]
        self.features = list(spec["features"])
        self.mean = np.asarray(spec["normalization"]["mean"], dtype=np.float32)
        self.std = np.asarray(spec["normalization"]["std"], dtype=np.float32)
        self.target_mean = np.float32(spec["target"]["mean"])
        self.target_std = np.float32(spec["target"]["std"])
        tensors = load_file(os.path.join(model_dir, "model.safetensors"))
        self.layers = []
        width = len(self.features)
        for i, layer in enumerate(spec["layers"]):
            w = tensors.pop(f"layers.{i}.weight")
            b = tensors.pop(f"layers.{i}.bias")
            assert w.shape == (layer["outputs"], layer["inputs"]) and layer["inputs"] == width
            assert b.shape == (layer["outputs"],)
            # Stored transposed once so the request path is one contiguous matmul per layer.
            self.layers.append((np.ascontiguousarray(w.T, dtype=np.float32),
                                b.astype(np.float32), ACTIVATIONS[layer["activation"]]))
            width = layer["outputs"]
        assert width == 1, "the last layer must have one output"
        assert not tensors, f"tensors not in model.json: {sorted(tensors)}"

    def predict(self, rows):
        """rows: array-like [N, features] of raw values -> float32 [N] quality."""
        x = (np.asarray(rows, dtype=np.float32) - self.mean) / self.std
        for w, b, act in self.layers:
            x = act(x @ w + b)
        return x[:, 0] * self.target_std + self.target_mean

    def row(self, features):
        """A {name: value} mapping in the model's feature order (KeyError if one is missing)."""
        return [features[name] for name in self.features]
