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


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 (Debian's postgresql, which .ci/run installs);
    the tests using it skip, saying why, only where no server can be started."""
    import glob
    import pwd
    import shutil
    import socket
    import tempfile

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    bindir = Path(found[-1]).parent
    as_postgres: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="sweeplab-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_postgres, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.skip(
                f"could not start PostgreSQL: {' '.join(cmd[:2])}: {done.stderr.strip()[-300:]}"
            )

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(folder / "log"),
        "-w",
        "start",
    )
    try:
        run(
            str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna"
        )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)
