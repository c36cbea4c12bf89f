"""MLflow tracking behind one module: one run per training, metrics per epoch, artifacts at the end.

    result, run_id = train_and_track(cfg)  # what `python -m sweeplab.train` and sweep trials call

which is

    with tracked_run(cfg) as run:          # creates the run; logs params, tags and the config YAML
        result = trainer.run(cfg, [run])   # run.on_epoch_end logs the epoch's metrics (step=epoch)
        run.log_result(result)             # test metrics, plots, model weights

The run ends FINISHED, FAILED if the block raised (with a `failure_reason` tag and the traceback as
an artifact), or KILLED on Ctrl-C/SIGTERM. The default store is SQLite plus an artifact folder
under the project's output folder (`sweeplab.config.output_dir`), wherever the command runs from.
"""

from __future__ import annotations

import fcntl
import functools
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeplab.config import Config, TrackingConfig, store_uri, to_flat_dict, to_yaml
from sweeplab.provenance import environment_tags, git_commit
from sweeplab.training import plots, trainer
from sweeplab.training.metric_writer import MAX_METRICS, MetricWriter, shared_writer
from sweeplab.training.trainer import Callback, TrainResult

HAND_OVER_EVERY_S = 0.1  # how often a run hands its metrics to the metric writer
WRITE_EVERY_S = 1.0  # or writes them itself (each call costs milliseconds on SQLite)
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests child runs by
MAX_BATCH = 100  # MLflow's limit of params or tags per log_batch call


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts beside a SQLite store (`<db dir>/mlartifacts/<experiment>`); servers choose their own."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / folder).as_uri()


def client_for(cfg: TrackingConfig) -> tuple[MlflowClient, str]:
    """The client and experiment id that `cfg` names (cached per process by `connect`)."""
    return connect(store_uri(cfg), cfg.experiment)


@functools.lru_cache(maxsize=8)
def connect(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client for `uri` and the id of `experiment` (created if new). Done once per process."""
    with _store_lock(uri):  # processes creating a new SQLite store at once would race
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        try:
            return client, client.create_experiment(experiment, _artifact_location(uri, experiment))
        except MlflowException:  # created meanwhile by a process using another store lock
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return client, found.experiment_id


@contextmanager
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


def default_run_name(cfg: Config) -> str:
    return f"{cfg.data.name}-h{cfg.model.d_hidden}-{cfg.model.activation}-{cfg.optimizer.name}"


class MlflowRun(Callback):
    """One MLflow run: a training callback that logs each epoch's metrics (step = epoch).

    Metrics are buffered and handed over in batches: with `background`, ten times a second to
    this process's metric writer (`metric_writer`, a helper process), else written here
    once a second. `flush` puts every metric so far in the store; ending the run does it. With
    `every` > 1 only every Nth epoch's metrics are logged, and the last epoch's whenever the run
    ends (finished, pruned or failed).
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        every: int = 1,
        uri: str | None = None,
        background: bool = False,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.every = every
        self.uri = uri
        self.background = background and uri is not None
        self.hand_over_every_s = HAND_OVER_EVERY_S if self.background else WRITE_EVERY_S
        self._writer: MetricWriter | None = None  # once this run has handed metrics to it
        self._pending: list[Metric] = []
        self._unlogged: tuple[int, dict[str, float]] | None = None  # a skipped last epoch
        self._last_hand_over = time.monotonic()

    @classmethod
    def start(
        cls, cfg: Config, parent_run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> MlflowRun:
        client, experiment_id = connect(store_uri(cfg.tracking), cfg.tracking.experiment)
        all_tags = {
            "dataset": cfg.data.name,
            "seed": str(cfg.seed),
            **environment_tags(),
            **(tags or {}),
        }
        if commit := git_commit():
            all_tags["mlflow.source.git.commit"] = commit
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        created = client.create_run(
            experiment_id, tags=all_tags, run_name=cfg.tracking.run_name or default_run_name(cfg)
        )
        run = cls(
            client,
            created.info.run_id,
            every=cfg.tracking.log_every_n_epochs,
            uri=store_uri(cfg.tracking),
            background=cfg.tracking.background_metrics,
        )
        params = [
            Param(key, str(value)[:6000])
            for key, value in to_flat_dict(cfg).items()
            if key != "sweep"
        ]
        for i in range(0, len(params), MAX_BATCH):
            client.log_batch(run.run_id, params=params[i : i + MAX_BATCH])
        client.log_text(run.run_id, to_yaml(cfg), "config.yaml")
        return run

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch % self.every:
            self._unlogged = (epoch, metrics)
            return
        self._unlogged = None
        self.log_metrics(metrics, step=epoch)
        if time.monotonic() - self._last_hand_over >= self.hand_over_every_s:
            self._hand_over()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())

    def _hand_over(self) -> None:
        """The metrics buffered so far to the metric writer, or into the store from here."""
        if self.background and self._writer is None:
            try:
                self._writer = shared_writer()
            except OSError as err:
                print(f"sweeplab: no metric writer ({err}); writing metrics here", file=sys.stderr)
                self.background = False
        if self._writer is not None:
            self._writer.send(self.uri, self.run_id, self._take_pending(), fallback=self._write)
        else:
            self._write(self._take_pending())

    def _take_pending(self) -> list[Metric]:
        pending, self._pending = self._pending, []
        self._last_hand_over = time.monotonic()
        return pending

    def _write(self, metrics: list[Metric]) -> None:
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS])

    def flush(self) -> None:
        """Every metric logged so far into the store."""
        if self._unlogged is not None:  # the run's last epoch so far: always kept
            epoch, metrics = self._unlogged
            self._unlogged = None
            self.log_metrics(metrics, step=epoch)
        if self._writer is not None:
            self._writer.sync()
        self._write(self._take_pending())

    def log_result(self, result: TrainResult, cfg: Config) -> None:
        """The run's final metrics (test split, RUN_METRICS), then plots and weights as artifacts."""
        step = len(result.history)
        last_epoch = result.history[-1] if result.history else {}
        final = {k: v for k, v in result.metrics.items() if k not in last_epoch}
        self.log_metrics(final, step=step)
        self.flush()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if cfg.tracking.log_plots:
                plots.save_run_plots(result, folder)
            if cfg.tracking.log_model and result.model is not None:
                torch.save(result.model.state_dict(), folder / "model_state_dict.pt")
            if any(folder.iterdir()):
                self.client.log_artifacts(self.run_id, str(folder))

    def end(self, status: str, reason: str | None = None) -> None:
        self.flush()
        if reason:
            self.client.set_tag(self.run_id, "failure_reason", reason[:5000])
        self.client.set_terminated(self.run_id, status)

    def fail(self, err: BaseException) -> None:
        """End FAILED, with the error as a tag and the full traceback as an artifact."""
        try:
            self.flush()
        finally:
            text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            self.client.log_text(self.run_id, text, "traceback.txt")
            self.end("FAILED", f"{type(err).__name__}: {err}")


@contextmanager
def tracked_run(
    cfg: Config,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    finished_on: tuple[type[BaseException], ...] = (),
) -> Iterator[MlflowRun]:
    """An MLflow run around a block. Exceptions in `finished_on` (e.g. a pruned trial) still end
    it FINISHED; Ctrl-C ends it KILLED; anything else FAILED. The exception always propagates."""
    run = MlflowRun.start(cfg, parent_run_id, tags)
    try:
        yield run
    except finished_on:
        run.end("FINISHED")
        raise
    except KeyboardInterrupt:
        run.end("KILLED", "interrupted (Ctrl-C or SIGTERM)")
        raise
    except BaseException as err:
        run.fail(err)
        raise
    else:
        run.end("FINISHED")


def train_and_track(
    cfg: Config,
    callbacks: tuple[Callback, ...] = (),
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    finished_on: tuple[type[BaseException], ...] = (),
    on_run_start: Callable[[str], None] | None = None,
) -> tuple[TrainResult, str]:
    """Train `cfg` inside one MLflow run; return the result and the run id.

    A sweep trial is the same call with a parent run, its pruning callback,
    `finished_on=(TrialPruned,)` so that a pruned trial's run still ends FINISHED, and
    `on_run_start` to record the run id on the trial before training starts.
    """
    with tracked_run(cfg, parent_run_id, tags, finished_on) as run:
        if on_run_start is not None:
            on_run_start(run.run_id)
        progress = trainer.ProgressBar(cfg.trainer.epochs, cfg.trainer.progress)
        try:
            result = trainer.run(cfg, callbacks=(run, *callbacks, progress))
        finally:
            progress.close()
        run.log_result(result, cfg)
    return result, run.run_id
