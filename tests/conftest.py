"""Shared fixtures: the real configs composed with tiny sizes, a temp output folder and one temp
SQLite MLflow store per test session (creating a store costs seconds, so it is made once)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
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


class PostgresServer:
    """A throw-away PostgreSQL server on 127.0.0.1 (Debian's postgresql, which .ci/run installs)
    with a database `optuna`; `stop` and `start` it (as a crash and a restart would), `remove`
    it. Skips the test, saying why, where no server can be started."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bindir = Path(found[-1]).parent
        self.as_postgres: list[str] = []
        self.folder = Path(tempfile.mkdtemp(prefix="sweeplab-pg-"))
        if os.geteuid() == 0:  # initdb refuses to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and no 'postgres' user to run the server as")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.data = self.folder / "data"
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust"
        )
        self.start()
        host = ("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres")
        self._run(str(self.bindir / "createdb"), *host, "optuna")
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/optuna"

    def _run(self, *cmd: str) -> None:
        done = subprocess.run(
            [*self.as_postgres, *cmd], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            pytest.skip(
                f"could not run PostgreSQL: {' '.join(cmd[:2])}: {done.stderr.strip()[-300:]}"
            )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(
            pg_ctl,
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [
                *self.as_postgres,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                mode,
                "stop",
            ],
            capture_output=True,
            timeout=120,
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of a PostgreSQL server the session's tests share."""
    server = PostgresServer()
    try:
        yield server.url
    finally:
        server.remove()
