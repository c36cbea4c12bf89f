"""A trained network as an MLflow model that `mlflow.pyfunc` loads and serves.

    save_pyfunc(result, cfg, folder)                     # an MLflow model folder
    model = mlflow.pyfunc.load_model("runs:/<run id>/model")   # or "models:/<name>/<version>"
    model.predict(x)        # x: (n, d_in) float32, the dataset's features; class probabilities
                            # (binary: P(class 1), multiclass: one column a class), or values

The folder holds the weights as a state dict and the network's shape in JSON; this module's code
loads them (`loader_module`), with `torch.load(weights_only=True)`: nothing is unpickled, unlike
a pickled `nn.Module` or a cloudpickled `PythonModel`.
"""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from sweeplab.config import Config, to_yaml
from sweeplab.training.model import TwoLayerNet, predict_proba
from sweeplab.training.trainer import TrainResult

WEIGHTS = "model_state_dict.pt"
NETWORK = "network.json"


def save_pyfunc(result: TrainResult, cfg: Config, folder: Path) -> Path:
    """Write `result`'s network as an MLflow pyfunc model into `folder` (which must not exist)."""
    import mlflow.pyfunc  # seconds to import: only in the process that logs a model
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    model, data = result.model, result.dataset
    network = {
        "d_in": data.n_features,
        "d_hidden": cfg.model.d_hidden,
        "d_out": data.n_outputs,
        "activation": cfg.model.activation,
        "task": data.task,
    }
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, data.n_features))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, data.n_outputs))]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, files / WEIGHTS)
        (files / NETWORK).write_text(json.dumps(network, indent=2))
        (files / "config.yaml").write_text(to_yaml(cfg))
        mlflow.pyfunc.save_model(
            str(folder),
            loader_module=__name__,
            data_path=str(files),
            signature=signature,
            # shown in the UI; MLflow loads the model and tries it on these
            input_example=data.x_test[:3].cpu().numpy(),
            # what loading needs, stated: MLflow's inference of them imports and scans packages
            pip_requirements=[f"sweeplab=={version('sweeplab')}", f"torch=={torch.__version__}"],
        )
    return folder


class Predictor:
    """What `mlflow.pyfunc` calls: the network's probabilities (or values) for a batch."""

    def __init__(self, net: TwoLayerNet, task: str) -> None:
        self.net = net.eval()
        self.task = task

    def predict(self, model_input: object, params: dict | None = None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return predict_proba(self.net(x), self.task).numpy()


def _load_pyfunc(data_path: str) -> Predictor:
    """MLflow's entry point for `loader_module`: the network from the model's data folder."""
    files = Path(data_path)
    network = json.loads((files / NETWORK).read_text())
    net = TwoLayerNet(network["d_in"], network["d_hidden"], network["d_out"], network["activation"])
    net.load_state_dict(torch.load(files / WEIGHTS, weights_only=True))
    return Predictor(net, network["task"])
