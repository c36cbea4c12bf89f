"""Is a store there? A database or MLflow server named by `tracking.uri` or `sweep.storage` is
asked once, in seconds, before any work, and a store that does not answer is refused in one line.

    check_reachable("tracking.uri", "postgresql+psycopg2://me@db/mlflow")   # or ConfigError
    ui_link(tracking_uri, run_id)     # the run's page in the MLflow UI, printed after a run

MLflow itself retries a database that does not answer for about two minutes per process, after
the run has trained; a missing driver surfaces as "Failed to import DB access module".
A SQLite file's folder must be writable (a journal's is the output folder, checked apart).
"""

from __future__ import annotations

import errno
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from sweeplab.config import ConfigError
from sweeplab.redaction import without_secrets

TIMEOUT_S = 10  # to connect to a store's server
LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves the local store


def ui_link(
    uri: str, run_id: str | None, experiment_id: str | None = None, view: str | None = None
) -> str:
    """A run's page in the MLflow UI, or with no run its experiment's runs table (in the UI's
    "Model training" view: MLflow 3 opens an experiment in its GenAI view, with no runs) as
    its saved `view` shows it, on the tracking server `uri` itself or where `make ui` serves a
    local store."""
    served = uri.startswith(("http://", "https://"))
    base = _without_user(uri).rstrip("/") if served else LOCAL_UI
    if run_id is None:
        shown = f"&viewStateShareKey={view}" if view else ""
        return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning{shown}"
    page = f"experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"runs/{run_id}"
    return f"{base}/#/{page}"


def check_reachable(key: str, url: str) -> None:
    """Refuse `url` (the value of `key`) if its server does not answer."""
    if url.startswith(("http://", "https://")):
        health = f"{_without_user(url).rstrip('/')}/health"
        try:
            with urllib.request.urlopen(health, timeout=TIMEOUT_S):
                return
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(
                f"{key}={without_secrets(url)!r}: no MLflow server answers there ({reason})"
            ) from None
    if url.startswith("sqlite:///"):
        _check_writable(key, url, Path(url.removeprefix("sqlite:///").partition("?")[0]))
    elif "://" in url and not url.startswith(("sqlite:", "file:")):
        _check_database(key, url)


def _check_writable(key: str, url: str, path: Path) -> None:
    """A SQLite file's folder must take a new file (SQLite writes a journal beside it), and the
    file itself, if it is there, must be writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-check-"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as err:
        raise ConfigError(
            f"{key}={without_secrets(url)!r}: cannot write there ({err.strerror or err})"
        ) from None


def _without_user(url: str) -> str:
    """`url` without its user name and password."""
    parts = urllib.parse.urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    return parts._replace(netloc=host).geturl()


def _check_database(key: str, url: str) -> None:
    # SQLAlchemy (a few tenths of a second to import) only for a database URL: the usual stores
    # are local files
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = create_engine(url, connect_args=_timeout_args(url))
        with engine.connect():
            pass
        engine.dispose()
    except (ImportError, SQLAlchemyError) as err:
        raise ConfigError(f"{key}={without_secrets(url)!r}: cannot open it ({why(err)})") from None


def _timeout_args(url: str) -> dict[str, int]:
    """A bounded connect for the drivers that take one (an unanswered host would hang minutes)."""
    return {"connect_timeout": TIMEOUT_S} if url.startswith(("postgresql", "mysql")) else {}


def why(err: BaseException) -> str:
    """The first line of what went wrong opening a store, without the libraries' wrapping."""
    if isinstance(err, ImportError):  # Optuna's "Failed to import DB access module" hides it
        missing = err.__cause__ or err
        return f"{missing}: name a driver that is installed, e.g. postgresql+psycopg2://..."
    cause = getattr(err, "orig", None) or err
    return without_secrets(str(cause).strip().splitlines()[0])
