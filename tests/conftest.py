"""Shared fixtures: the real configs composed with tiny sizes, a temp output folder and one temp
SQLite MLflow store per test session (creating a store costs seconds, so it is made once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sweeplab.config import CONF_DIR, Config, register_configs, to_config

TINY = [
    "data.n_train=200",
    "data.n_val=100",
    "data.n_test=100",
    "trainer.epochs=3",
    "trainer.batch_size=50",
    "trainer.progress=false",
]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _isolated_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing a test does may write into the project's real outputs/ folder."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("SWEEPLAB_OUTPUT", str(out))
    return out


def compose_raw(*overrides: str):
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", list(overrides))


@pytest.fixture
def make_config(mlflow_uri: str):
    """make_config("model.d_hidden=8", ...) -> typed Config: tiny data and epochs, temp store."""

    def make(*overrides: str, tiny: bool = True) -> Config:
        base = [*TINY, f"tracking.uri={mlflow_uri}"] if tiny else [f"tracking.uri={mlflow_uri}"]
        return to_config(compose_raw(*base, *overrides))

    return make


def run_cli(module: str, *args: str, env: dict[str, str] | None = None, timeout: int = 300):
    """Run `python -m <module> args...` as a real subprocess; returns CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
