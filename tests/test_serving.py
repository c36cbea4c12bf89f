"""The trained network as an MLflow model: `mlflow.pyfunc` loads it (no pickle) and predicts what
the trainer's own network predicts (issue 17)."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pytest
import torch

from sweeplab.serving import NETWORK, WEIGHTS, save_pyfunc
from sweeplab.training import trainer
from sweeplab.training.model import predict_proba


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.activation=tanh",),  # binary: P(class 1)
        ("data=regression", "model.activation=relu"),  # values, two outputs
    ],
    ids=["synthetic", "regression"],
)
def test_the_pyfunc_model_predicts_what_the_trainers_network_predicts(
    make_config, tmp_path, overrides
):
    cfg = make_config("trainer.epochs=3", "model.d_hidden=7", *overrides)
    result = trainer.run(cfg)
    folder = save_pyfunc(result, cfg, tmp_path / "model")
    assert {WEIGHTS, NETWORK} <= {p.name for p in folder.rglob("*")}
    assert not list(folder.rglob("*.pkl")), "nothing pickled: a state dict and code"

    served = mlflow.pyfunc.load_model(str(folder))
    x = result.dataset.x_test.cpu()
    with torch.inference_mode():
        expected = predict_proba(result.model.eval()(x), result.dataset.task).numpy()
    predicted = served.predict(x.numpy())
    assert predicted.shape == (len(x), result.dataset.n_outputs)
    np.testing.assert_array_equal(predicted, expected)
