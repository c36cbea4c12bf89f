"""MLflow tracking of a training run, without MLflow in the training process.

    result, run_id = train_and_track(cfg)  # what `python -m sweeplab.train` and sweep trials call

which is

    with tracked_run(cfg) as run:          # hands the run's start (params, tags, config) over
        result = trainer.run(cfg, [run])   # run.on_epoch_end hands each epoch's metrics over
        run.log_result(result, cfg)        # final metrics, the pictures' data, the weights

Every write goes through this process's `mlflow_helper.Helper` to a helper process that owns
the MLflow store and writes while training goes on. The run ends FINISHED, FAILED if the block
raised (with a `failure_reason` tag and the traceback as an artifact), or KILLED on Ctrl-C or
SIGTERM; the block's end waits until all of it is in the store.
"""

from __future__ import annotations

import io
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sweeplab.config import (
    DISTORTIONS,
    Config,
    TrainerConfig,
    idle_keys,
    output_dir,
    store_uri,
    to_flat_dict,
    to_yaml,
)
from sweeplab.phases import mark_phase
from sweeplab.provenance import environment_tags, source_tags
from sweeplab.runtime import INTERRUPTED
from sweeplab.training import trainer
from sweeplab.training.augment import image_distortions
from sweeplab.training.checkpoint import TrainState
from sweeplab.training.data import Dataset, load_dataset
from sweeplab.training.loops import Loop, choose_loop
from sweeplab.training.mlflow_helper import Helper, shared_helper
from sweeplab.training.model import predict_proba
from sweeplab.training.stack.trainer import run_alone
from sweeplab.training.trainer import Callback, TrainResult

HAND_OVER_EVERY_S = 0.1  # how often a run hands its metrics to the helper process
WRITE_EVERY_S = 1.0  # or writes them itself (each call costs milliseconds on SQLite)
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests child runs by
RUN_NAME_TAG = "mlflow.runName"  # set as a tag, it renames the run
NOTE_TAG = "mlflow.note.content"  # the run's description on its page in the UI
# how a run is carried out and recorded, not what it learns: no param (they would only crowd
# the UI's column list), but in the run's config.yaml
NOT_PARAMS = (
    "tracking.",
    "trainer.progress",
    "trainer.eval_batch_size",
    "trainer.num_threads",
    "trainer.native",
    "trainer.backward",
    "trainer.checkpoint_every",
    "trainer.divergence_ratio",
    "data.mirrors",
    "data.download",
)
GRID = 100  # points per axis of the plane pictures
MAX_HIDDEN_SHOWN = 16  # hidden units drawn over the plane
MAX_WEIGHTS_SHOWN = 100  # hidden units whose input weights are drawn as images
MAX_WRONG_SHOWN = 36  # misclassified test images drawn
DISTORTED_SHOWN = 8  # training images drawn with the distortions a run trains on,
DISTORTIONS_SHOWN = 3  # each this many times


def param_text(value: Any) -> str:
    """A param as the MLflow UI shows it: a float to 4 significant digits, so that its runs
    table, which cuts long values, keeps the exponent ("4.133e-05", not "4.13276077...");
    the exact values are in the run's config.yaml."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def default_run_name(cfg: Config) -> str:
    return f"{cfg.data.name}-h{cfg.model.d_hidden}-{cfg.model.activation}-{cfg.optimizer.name}"


def run_params(cfg: Config) -> dict[str, Any]:
    """The config keys a run logs as params: `tracking.params`, else all but `NOT_PARAMS` and
    those that change nothing in this run (the compare view plots what differs between runs)."""
    flat = to_flat_dict(cfg)
    keys = cfg.tracking.params
    if keys is None:
        idle = idle_keys(cfg)
        keys = [k for k in flat if k != "sweep" and not k.startswith(NOT_PARAMS) and k not in idle]
    return {key: flat[key] for key in keys if key in flat}


def run_spec(cfg: Config, parent_run_id: str | None, tags: dict[str, str] | None) -> dict:
    """What the helper creates the run with: its store, name, start time (now), tags, params and
    config."""
    all_tags = {"dataset": cfg.data.name, **environment_tags(), **source_tags()}
    all_tags |= cfg.tracking.tags | (tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    params = {key: param_text(value) for key, value in run_params(cfg).items()}
    return {
        "uri": store_uri(cfg.tracking),
        "experiment": cfg.tracking.experiment,
        "output": str(output_dir()),
        "run_name": cfg.tracking.run_name or default_run_name(cfg),
        "start_time": int(time.time() * 1000),
        "tags": all_tags,
        "params": params,
        "config_yaml": to_yaml(cfg),
        "system_metrics": cfg.tracking.system_metrics,
    }


class TrackedRun(Callback):
    """One MLflow run: a training callback that hands each epoch's metrics over (step = epoch).

    Metrics are buffered and handed to the helper ten times a second (once a second when this
    process writes them itself, `tracking.background_metrics=false`). With `every` > 1 only
    every Nth epoch's metrics are logged, and the last epoch's whenever the run ends (finished,
    pruned or failed). `run_id` is known once the helper has created the run.
    """

    def __init__(self, helper: Helper, key: str, every: int = 1) -> None:
        self.helper = helper
        self.key = key
        self.every = every
        self.hand_over_every_s = WRITE_EVERY_S if helper.broken else HAND_OVER_EVERY_S
        self._pending: list[tuple[str, float, int, int]] = []
        self._unlogged: tuple[int, dict[str, float]] | None = None  # a skipped last epoch
        self._last_hand_over = time.monotonic()

    @classmethod
    def start(
        cls,
        cfg: Config,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        on_started: Callable[[str], None] | None = None,
        key: str | None = None,
        hand_over_every_s: float | None = None,
    ) -> TrackedRun:
        """Hand the run's start over; `on_started` is told its id once the store has it. `key`
        names the run in later messages to the helper (default: a new one);
        `hand_over_every_s` how often metrics go to it (a stack's many runs: less often)."""
        helper = shared_helper(cfg.tracking.background_metrics)
        run = cls(helper, key or uuid.uuid4().hex, cfg.tracking.log_every_n_epochs)
        if hand_over_every_s is not None:
            run.hand_over_every_s = hand_over_every_s
        if on_started is not None:
            helper.on_started[run.key] = on_started
        helper.send(("start", run.key, run_spec(cfg, parent_run_id, tags)))
        run.start_message = helper.sent
        helper.stay_below()  # training begins: the helper takes only a share of a core from now
        return run

    def wait_started(self) -> str:
        """The run's id, once the store has made the run (and told `on_started`)."""
        self.helper.sync(through=self.start_message)
        return self.run_id

    @property
    def run_id(self) -> str | None:
        return self.helper.run_ids.get(self.key)

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
        self._pending.extend((key, float(value), now, step) for key, value in metrics.items())

    def _hand_over(self) -> None:
        if self._unlogged is not None:  # the run's last epoch so far: always kept
            epoch, metrics = self._unlogged
            self._unlogged = None
            self.log_metrics(metrics, step=epoch)
        pending, self._pending = self._pending, []
        self._last_hand_over = time.monotonic()
        if pending:
            self.helper.send(("metrics", self.key, pending))

    def log_result(self, result: TrainResult, cfg: Config) -> None:
        """The run's final metrics (test split, RUN_METRICS); the pictures and the weights."""
        last_epoch = result.history[-1] if result.history else {}
        self.log_metrics(
            {k: v for k, v in result.metrics.items() if k not in last_epoch},
            step=len(result.history),
        )
        self._hand_over()
        self.log_artifacts(result, cfg)

    def log_artifacts(self, result: TrainResult, cfg: Config) -> None:
        """The run's pictures and weights, as `tracking.log_plots` and `log_model` say."""
        files = {}
        if cfg.tracking.log_model and result.model is not None:
            weights = io.BytesIO()
            torch.save(result.model.state_dict(), weights)
            files["model_state_dict.pt"] = weights.getvalue()
        pictures = picture_data(result, cfg.trainer, cfg.seed) if cfg.tracking.log_plots else None
        if files or pictures:
            self.helper.send(("artifacts", self.key, files, pictures))
        mark_phase("weights and picture data handed over")

    def end(
        self,
        status: str,
        reason: str | None = None,
        traceback_text: str | None = None,
        wait: bool = True,
    ) -> None:
        """End the run with `status`; with `wait`, return once all of it is in the store (a
        stack's runs do not wait each: their worker syncs once)."""
        self._hand_over()
        now = int(time.time() * 1000)
        self.helper.send(("end", self.key, status, reason, traceback_text, now))
        if wait:
            self.helper.sync()

    def fail(self, err: BaseException, wait: bool = True) -> None:
        """End FAILED, with the error as a tag and the full traceback as an artifact."""
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        self.end("FAILED", f"{type(err).__name__}: {err}", text, wait)


@contextmanager
def tracked_run(
    cfg: Config,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    finished_on: tuple[type[BaseException], ...] = (),
    on_started: Callable[[str], None] | None = None,
    key: str | None = None,
) -> Iterator[TrackedRun]:
    """An MLflow run around a block. Exceptions in `finished_on` (e.g. a pruned trial) still end
    it FINISHED; Ctrl-C ends it KILLED; anything else FAILED. The exception always propagates."""
    run = TrackedRun.start(cfg, parent_run_id, tags, on_started, key)
    try:
        yield run
    except finished_on:
        run.end("FINISHED")
        raise
    except KeyboardInterrupt:
        run.end("KILLED", INTERRUPTED)
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
    key: str | None = None,
    checkpoint: Path | None = None,
    resume: TrainState | None = None,
) -> tuple[TrainResult, str]:
    """Train `cfg` inside one MLflow run; return the result and the run id.

    A sweep trial is the same call with a parent run, its pruning callback,
    `finished_on=(TrialPruned,)` so that a pruned trial's run still ends FINISHED, and
    `on_run_start` to record the run id on the trial as soon as the store has made the run,
    and the `key` it writes the trial's tags with (`mlflow_helper`), and its `checkpoint` file
    and the state it `resume`s from (`trainer.run`: the run logs the resumed epochs too).
    """
    with tracked_run(cfg, parent_run_id, tags, finished_on, on_run_start, key) as run:
        progress = trainer.ProgressBar(cfg.trainer.epochs, cfg.trainer.progress)
        try:
            result = train(cfg, (run, *callbacks, progress), checkpoint, resume)
        finally:
            progress.close()
        run.log_result(result, cfg)
    return result, run.run_id


def train(
    cfg: Config,
    callbacks: tuple[Callback, ...] = (),
    checkpoint: Path | None = None,
    resume: TrainState | None = None,
) -> TrainResult:
    """`trainer.run`, or the same steps as a stack of one where that loop covers `cfg`."""
    data, device = load_dataset(cfg.data), trainer.resolve_device(cfg.trainer.device)
    if resume is None and choose_loop(cfg, data, device) is Loop.STACK_NATIVE:
        return run_alone(cfg, callbacks)  # (a stack resumes nothing)
    return trainer.run(cfg, callbacks, checkpoint, resume)


@torch.inference_mode()
def picture_data(result: TrainResult, trainer: TrainerConfig, seed: int) -> dict[str, Any]:
    """What the run's pictures show (`plots.draw_run_pictures`), as numpy arrays: computed here,
    where the model is, drawn by the helper process."""
    model, data = result.model, result.dataset
    pictures: dict[str, Any] = {"history": result.history}
    if model is None or data is None:
        return pictures
    if (distort := image_distortions(trainer, data, data.x_train.device)) is not None:
        originals = data.x_train[:DISTORTED_SHOWN]
        generator = torch.Generator().manual_seed(seed)
        rows = [originals, *(distort(originals, generator) for _ in range(DISTORTIONS_SHOWN))]
        pictures["distortions"] = {
            "shape": data.image_shape,
            "images": torch.cat(rows).cpu().numpy(),
            "per_row": DISTORTED_SHOWN,
            "settings": {k: getattr(trainer, k) for k, _, _ in DISTORTIONS if getattr(trainer, k)}
            | ({"elastic_sigma": trainer.elastic_sigma} if trainer.elastic_alpha else {}),
        }
    model.eval()
    if data.n_features == 2:
        pictures["plane"] = _plane(model, data)
    if data.task == "multiclass":
        predicted = torch.cat([model(x).argmax(1) for x in data.x_test.split(8192)])
        true = data.y_test
        pictures["classes"] = {
            "predicted": predicted.cpu().numpy(),
            "true": true.cpu().numpy(),
            "n_classes": data.n_outputs,
        }
        if data.image_shape is not None:
            wrong = torch.nonzero(predicted != true)[:, 0]
            shown = wrong[:MAX_WRONG_SHOWN]
            pictures["images"] = {
                "shape": data.image_shape,
                "weights": model.hidden.weight[:MAX_WEIGHTS_SHOWN].cpu().numpy(),
                "n_hidden": model.hidden.out_features,
                "wrong_images": data.x_test[shown].cpu().numpy(),
                "wrong_predicted": predicted[shown].cpu().numpy(),
                "wrong_true": true[shown].cpu().numpy(),
                "n_wrong": len(wrong),
                "n_test": len(true),
            }
    return pictures


def _plane(model: torch.nn.Module, data: Dataset) -> dict[str, Any]:
    """The network over a GRID x GRID grid of [0,1]^2 (row-major from the bottom-left)."""
    axis = torch.linspace(0.0, 1.0, GRID)
    x1, x0 = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([x0.ravel(), x1.ravel()], 1).to(data.x_train.device)
    hidden = model.hidden_features(points)[:, :MAX_HIDDEN_SHOWN]
    probability = None
    if data.task == "binary":
        probability = predict_proba(model(points), "binary")[:, 0].reshape(GRID, GRID)
        probability = probability.cpu().numpy()
    return {
        "probability": probability,
        "hidden": hidden.reshape(GRID, GRID, -1).cpu().numpy(),
        "n_hidden": model.hidden.out_features,
        "out_weights": model.output.weight[:, :MAX_HIDDEN_SHOWN].cpu().numpy(),
        "x": data.x_train.cpu().numpy(),
        "y": data.y_train[:, 0].cpu().numpy() if data.task == "binary" else np.zeros(0),
    }
