"""The MLflow side of tracking: what a run's messages do to the store, and the helper process
that does it while training goes on.

    store = RunStore()
    run_id = store.apply(("start", key, spec))       # spec: uri, experiment, run_name,
                                                      # start_time, tags, params, config_yaml
    store.apply(("metrics", key, rows))               # rows of (name, value, timestamp, step)
    store.apply(("artifacts", key, files, pictures))  # files by name; picture data to draw
    store.apply(("end", key, "FINISHED", None, None, end_ms))  # status, failure reason,
                                                      # traceback, end time (None = now)

The training process never imports this module: it sends the messages through
`mlflow_helper.Helper` to `python -m sweeplab.training.mlflow_store READ_FD WRITE_FD`, this
module's `serve`, which applies them in order and confirms each. Only where the helper cannot
write does the training process apply them itself, with a RunStore of its own. When the training
process goes away without ending its runs (kill -9, the OOM killer), `serve` ends them KILLED.

The default store is SQLite plus an artifact folder under the project's output folder
(`config.store_uri`), wherever the command runs from.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy
from mlflow.entities import Metric, Param, RunInfo, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import SqlMetric, SqlParam
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.uri import is_local_uri

from sweeplab.figures import pyplot
from sweeplab.machine import machine_failure
from sweeplab.phases import mark_phase
from sweeplab.redaction import redact_streams, without_secrets
from sweeplab.training import plots

MAX_BATCH = 100  # MLflow's limit of params or tags per log_batch call
MAX_METRICS = 1000  # MLflow's limit of metrics per log_batch call
MAX_PARAM_CHARS = 6000  # MLflow's limit of a param value's length
ORPHANED = "the training process ended without ending this run (killed?)"
SYSTEM_METRICS_EVERY_S = 1.0  # tracking.system_metrics: a sample a second (MLflow: 10 s)

# MLflow's SQL store logs every database error with its traceback, then raises it: the raised
# error reaches the run's owner; the log put hundreds of lines per write on a full disk
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _artifact_location(uri: str, experiment: str, output: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite store (`<db dir>/mlartifacts/
    <experiment>`), in the output folder for a database server (MLflow's own default is
    ./mlruns wherever the command runs); an MLflow server chooses."""
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / folder).as_uri()
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (Path(output) / "mlartifacts" / folder).as_uri()


@functools.lru_cache(maxsize=8)
def connect(uri: str, experiment: str, output: str) -> tuple[MlflowClient, str]:
    """A client for `uri` and the id of `experiment` (created if new, its artifacts under the
    `output` folder where the store does not say). Done once per process."""
    with _store_lock(uri):  # processes creating a new SQLite store at once would race
        _create_sqlite_store(uri)
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        try:
            location = _artifact_location(uri, experiment, output)
            return client, client.create_experiment(experiment, location)
        except MlflowException:  # created meanwhile by a process using another store lock
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return client, found.experiment_id


def _create_sqlite_store(uri: str) -> None:
    """A new SQLite store's tables, its "Default" experiment's artifacts beside it, where
    `make ui` puts them (MLflow's client would put them in ./mlruns wherever it runs)."""
    db = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or db.exists():
        return
    with contextlib.suppress(Exception):  # another client created it meanwhile: it is there
        SqlAlchemyStore(uri, (db.parent / "mlartifacts").as_uri()).engine.dispose()


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock beside a SQLite store (nothing for server stores)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        handle = open(db.parent / f"{db.name}.lock", "a")  # noqa: SIM115 - closed below
    except OSError as err:
        raise RuntimeError(f"tracking.uri={uri}: cannot write in {db.parent}: {err}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class RunStore:
    """Applies a training process's messages to MLflow; knows its runs by the sender's keys."""

    def __init__(self, forked_pictures: bool = False) -> None:
        self.forked_pictures = forked_pictures  # a fork draws half of them (in the helper)
        self.runs: dict[str, tuple[str, str]] = {}  # key -> (uri, run id)
        self.open: set[str] = set()  # keys of runs started and not ended
        self.monitors: dict[str, SystemMetricsMonitor] = {}  # key -> its system metrics' thread
        self._clients: dict[str, MlflowClient] = {}

    def adopt(self, key: str, uri: str, run_id: str, ends_here: bool = True) -> None:
        """A run another RunStore started (the helper's, before it died), or with `ends_here`
        false one that another process ends (a sweep's parent run), known by `key` from now."""
        self.runs[key] = (uri, run_id)
        if ends_here:
            self.open.add(key)

    def apply(self, message: tuple) -> str | None:
        """Do what `message` says; a start returns the new run's id."""
        kind, key, *payload = message
        return getattr(self, kind)(key, *payload)

    def _client(self, key: str) -> tuple[MlflowClient, str]:
        uri, run_id = self.runs[key]
        if uri not in self._clients:
            self._clients[uri] = fast_sqlite(MlflowClient(tracking_uri=uri))
        return self._clients[uri], run_id

    def start(self, key: str, spec: dict[str, Any]) -> str:
        """A new run: `spec` holds its store's uri, experiment, run_name, tags, params (a
        flat dict) and config_yaml (logged as config.yaml)."""
        client, experiment_id = connect(spec["uri"], spec["experiment"], spec["output"])
        fast_sqlite(client)
        created = client.create_run(  # the run's times are its sender's: the helper may write late
            experiment_id, spec.get("start_time"), spec["tags"], spec["run_name"]
        )
        run_id = created.info.run_id
        self.runs[key] = (spec["uri"], run_id)
        self.open.add(key)
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in spec["params"].items()]
        if not bulk_insert(
            client, SqlParam, [{"run_uuid": run_id, "key": p.key, "value": p.value} for p in params]
        ):
            for i in range(0, len(params), MAX_BATCH):
                client.log_batch(run_id, params=params[i : i + MAX_BATCH])
        if spec.get("config_yaml"):
            log_text(client, created.info, spec["config_yaml"], "config.yaml")
        if spec.get("system_metrics"):  # the machine's, sampled here while the run trains
            monitor = SystemMetricsMonitor(
                run_id, SYSTEM_METRICS_EVERY_S, samples_before_logging=1, tracking_uri=spec["uri"]
            )
            monitor.start()
            self.monitors[key] = monitor
        mark_phase("helper: run created (params, tags, config)")
        return run_id

    def metrics(self, key: str, rows: list[tuple[str, float, int, int]]) -> None:
        client, run_id = self._client(key)
        rows = [(name, as_logged(value), *rest) for name, value, *rest in rows]
        if not log_metrics_bulk(client, run_id, rows):
            for i in range(0, len(rows), MAX_METRICS):
                batch = [Metric(*row) for row in rows[i : i + MAX_METRICS]]
                client.log_batch(run_id, metrics=batch)

    def tags(self, key: str, tags: dict[str, str]) -> None:
        client, run_id = self._client(key)
        client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def artifacts(self, key: str, files: dict[str, bytes], pictures: dict | None) -> None:
        """Files by name, and the pictures drawn from their data (training.plots)."""
        client, run_id = self._client(key)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for name, content in files.items():
                (folder / name).write_bytes(content)
            if pictures is not None:
                plots.draw_run_pictures(pictures, folder, self.forked_pictures)
                mark_phase("helper: pictures drawn")
            if any(folder.iterdir()):
                client.log_artifacts(run_id, str(folder))

    def end(
        self,
        key: str,
        status: str,
        reason: str | None,
        traceback_text: str | None,
        end_time: int | None = None,
    ) -> None:
        client, run_id = self._client(key)  # an unknown run: KeyError (its start failed here)
        if traceback_text:  # an error's text may quote a store's URL
            client.log_text(run_id, without_secrets(traceback_text), "traceback.txt")
        if reason:
            client.set_tag(run_id, "failure_reason", without_secrets(reason)[:5000])
        if (monitor := self.monitors.pop(key, None)) is not None:
            monitor.finish()
        client.set_terminated(run_id, status, end_time)
        self.open.discard(key)

    def end_open_runs(self, status: str, reason: str) -> None:
        for key in list(self.open):
            self.end(key, status, reason, None)


def as_logged(value: float) -> float:
    """A metric as the store keeps it: a fraction as the shortest decimal that reads back as the
    same float32 (0.41, not 0.4099999964237213: the metrics are float32 computations, and the UI
    shows every digit it is given); whole numbers and NaN as they are."""
    value = float(value)
    if not math.isfinite(value) or value.is_integer():
        return value
    return float(str(np.float32(value)))


def log_text(client: MlflowClient, run: RunInfo, text: str, name: str) -> None:
    """MLflow's log_text; into a local artifact folder written directly, where MLflow's own
    call reads the run back from the store and copies a temporary file."""
    if not is_local_uri(run.artifact_uri):
        client.log_text(run.run_id, text, name)
        return
    folder = Path(local_file_uri_to_path(run.artifact_uri))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def fast_sqlite(client: MlflowClient) -> MlflowClient:
    """A client whose SQLite store commits without waiting for the disk: write-ahead logging
    (the database file's mode from then on) and synchronous=NORMAL on this process's
    connections, which MLflow leaves at their slowest (a rollback journal, every commit synced).
    After a power cut, not a crash, the last commits may be lost."""
    store = _sql_store(client)
    if store is None or store.engine.dialect.name != "sqlite" or id(store) in _FAST_SQLITE:
        return client
    _FAST_SQLITE.add(id(store))
    with store.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    sqlalchemy.event.listen(
        store.engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA synchronous=NORMAL")
    )
    store.engine.dispose()  # the connections already open are made again, with it
    return client


_FAST_SQLITE: set[int] = set()  # the stores fast_sqlite has set up, by id


def _sql_store(client: MlflowClient) -> SqlAlchemyStore | None:
    store = client._tracking_client.store
    return store if isinstance(store, SqlAlchemyStore) else None


def bulk_insert(client: MlflowClient, table: type, rows: list[dict[str, Any]]) -> bool:
    """Rows into one of MLflow's tables (its SQLAlchemy model `table`) in one INSERT, where
    the store is MLflow's SQL store; False (nothing done) elsewhere or if a row exists already:
    then MLflow's own API writes them. MLflow's log_batch makes an ORM object of every row,
    which costs a SQLite store hundreds of microseconds a value: more than a small network's
    epoch."""
    store = _sql_store(client)
    if store is None or not rows:
        return False
    try:
        with store.ManagedSessionMaker(read_only=False) as session:
            session.execute(sqlalchemy.insert(table.__table__), rows)
    except MlflowException as err:
        if isinstance(err.__cause__, sqlalchemy.exc.IntegrityError):  # a retried write
            return False
        raise
    return True


def log_metrics_bulk(client: MlflowClient, run_id: str, rows: list[tuple]) -> bool:
    """MLflow's SqlAlchemyStore._log_metrics_once in one INSERT: the rows (name, value,
    timestamp, step) into MLflow's metrics table, then MLflow's own update of the run's latest
    values. False (nothing done) where the store is not MLflow's SQL store, or on a duplicate."""
    store = _sql_store(client)
    if store is None or not rows:
        return False
    values = []
    for name, value, timestamp, step in dict.fromkeys(rows):  # duplicates once, as MLflow does
        is_nan, stored = store.sanitize_metric_value(value)
        values.append(
            {
                "run_uuid": run_id,
                "key": name,
                "value": stored,
                "timestamp": timestamp,
                "step": step,
                "is_nan": is_nan,
            }
        )
    latest = {}
    for row in values:  # only the newest of each name can change the run's latest values
        newest = latest.get(row["key"])
        if newest is None or (row["step"], row["timestamp"], row["value"]) > (
            newest["step"],
            newest["timestamp"],
            newest["value"],
        ):
            latest[row["key"]] = row
    try:
        with store.ManagedSessionMaker(read_only=False) as session:
            store._check_run_is_active(store._get_run(run_uuid=run_id, session=session))
            session.execute(sqlalchemy.insert(SqlMetric.__table__), values)
            store._update_latest_metrics_if_necessary(
                [SqlMetric(**row) for row in latest.values()], session
            )
    except MlflowException as err:
        if isinstance(err.__cause__, sqlalchemy.exc.IntegrityError):  # a retried write
            return False
        raise
    return True


def failure(err: BaseException) -> str:
    """An error in one line, as a failure reason."""
    return f"{type(err).__name__}: {err}"


def serve(requests: Connection, replies: Connection) -> None:
    """The helper: apply each message, in order, and answer ("done", number, result) or
    ("failed", number, reason); end the runs left open when the training process goes."""
    mark_phase("helper: MLflow imported")  # niced once training began (Helper.stay_below)
    gc.freeze()  # MLflow's objects are long-lived; full collections over them slowed writes
    store = RunStore(forked_pictures=True)  # (the training process forks nothing)
    replies.send(("ready",))
    matplotlib_loaded = False
    while True:
        if not matplotlib_loaded and store.runs and not requests.poll(0):
            pyplot()  # while idle: the pictures at the run's end need not wait for its import
            matplotlib_loaded = True
        try:
            number, message = requests.recv()
        except EOFError:  # the training process closed the pipe or died
            break
        try:
            reply = ("done", number, store.apply(message))
        except Exception as err:  # the training process applies it again and sees the error
            reply = ("failed", number, failure(err))
        # a training process that died leaves what it sent in the pipe: written all the same
        with contextlib.suppress(BrokenPipeError):
            replies.send(reply)
    try:
        store.end_open_runs("KILLED", ORPHANED)
    except Exception as err:  # nothing left to report to but the terminal
        why = machine_failure(err) or failure(err).splitlines()[0]
        print(f"sweeplab: the MLflow helper could not end its runs ({why})", file=sys.stderr)


if __name__ == "__main__":
    redact_streams()  # MLflow's and SQLAlchemy's warnings may quote a store's URL
    serve(
        Connection(int(sys.argv[1]), writable=False),
        Connection(int(sys.argv[2]), readable=False),
    )
    sys.stderr.flush()
    os._exit(0)  # the training process waits for this exit: skip tearing MLflow and matplotlib down
