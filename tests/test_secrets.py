"""A password in a URL (`sweep.storage`, `tracking.uri`) is never written or printed in clear:
not in MLflow, not in the Optuna storage, not in any file under the output folder or the working
directory, not on stdout/stderr. Real PostgreSQL (trust auth: any password connects)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url

from sweeplab.redaction import without_secrets

from .test_sweep import SMALL

PLANTED = "Planted-pw-9731"


def test_without_secrets_masks_only_passwords():
    assert without_secrets("postgresql://me:s3cr@t:x@db:5432/optuna") == (
        "postgresql://me:***@db:5432/optuna"
    )
    assert without_secrets("a=http://u:p@h/x b=https://h:443/y c=sqlite:////tmp/x.db") == (
        "a=http://u:***@h/x b=https://h:443/y c=sqlite:////tmp/x.db"
    )
    unchanged = "postgresql://me@db:5432/optuna outputs/optuna/study.journal user:pass@host"
    assert without_secrets(unchanged) == unchanged
    # SQLAlchemy takes a "/" in a password as it is; libpq takes a password from the query
    assert without_secrets("'postgresql://me:pa/ss@db/x'") == "'postgresql://me:***@db/x'"
    assert without_secrets("postgresql://db/x?sslmode=require&password=s3&y=1") == (
        "postgresql://db/x?sslmode=require&password=***&y=1"
    )


def test_log_handlers_made_before_the_streams_were_masked_are_masked_too():
    """Optuna makes its log handler on sys.stderr when it is imported, before a command masks
    the streams: what it logs (a failed trial's error, say) is masked all the same."""
    script = (
        "import optuna\n"
        "from sweeplab.redaction import redact_streams\n"
        "redact_streams()\n"
        "optuna.logging.get_logger('optuna').warning('postgresql://me:s3cret@db/x')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "postgresql://me:***@db/x" in done.stderr and "s3cret" not in done.stderr


def _database(postgres_url: str, name: str, password: str) -> str:
    """A fresh database beside the fixture's, its URL with `password` in it."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(postgres_url).set(database=name, password=password)
    return url.render_as_string(hide_password=False)


def _rows_holding(url: str, secret: str) -> list[str]:
    """Every row of every table of the database that holds `secret` anywhere."""
    engine = create_engine(url)
    found = []
    with engine.connect() as connection:
        for table in inspect(engine).get_table_names():
            for row in connection.execute(select(text("*")).select_from(text(f'"{table}"'))):
                if secret in str(tuple(row)):
                    found.append(f"{table}: {tuple(row)}"[:300])
    engine.dispose()
    return found


def _files_holding(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.slow
def test_a_planted_password_is_never_written_or_printed(postgres_url, tmp_path):
    tracking = _database(postgres_url, "mlflow_secrets", PLANTED)
    storage = _database(postgres_url, "optuna_secrets", PLANTED)
    env = {**os.environ, "SWEEPLAB_OUTPUT": str(tmp_path / "outputs")}

    def command(module: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", module, *args, f"tracking.uri={tracking}"],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,  # where MLflow puts a database store's artifacts (./mlruns)
            env=env,
        )

    done = [
        command("sweeplab.train", *SMALL, "tracking.log_plots=true"),
        command(
            "sweeplab.sweep",
            "sweep=synthetic",
            *SMALL,
            f"sweep.storage={storage}",
            "sweep.n_trials=4",
            "sweep.workers=2",
            "sweep.study_name=secrets",
        ),
        # refused: an unreachable store's error names the URL, without its password
        command(
            "sweeplab.sweep",
            "sweep=synthetic",
            *SMALL,
            f"sweep.storage=postgresql://me:{PLANTED}@127.0.0.1:9/nowhere",
        ),
    ]
    assert [d.returncode for d in done][:2] == [0, 0], done[1].stderr[-3000:]
    assert done[2].returncode == 2
    assert "postgresql://me:***@127.0.0.1:9/nowhere" in done[2].stderr
    for d in done:
        assert PLANTED not in d.stdout + d.stderr
    assert _files_holding(tmp_path, PLANTED) == []
    # a database store's artifacts are in the output folder, not in ./mlruns where it ran
    assert not (tmp_path / "mlruns").exists()
    assert list((tmp_path / "outputs" / "mlartifacts").rglob("config.yaml"))
    assert _rows_holding(tracking, PLANTED) == []
    assert _rows_holding(storage, PLANTED) == []
    # what was masked is there, masked: the runs' params and config, the sweep's parent
    assert _rows_holding(tracking, without_secrets(tracking))
