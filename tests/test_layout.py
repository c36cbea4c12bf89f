"""The shape of the code: an acyclic import graph with imports at the top, each default stated
once, and the extension recipes of the README (an optimizer, a dataset, a sampler or pruner, a
metric), each done here as a user would do it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from sweeplab import config
from sweeplab.config import CONF_DIR, PROJECT_ROOT, register_configs, to_config
from sweeplab.sweep.plan import plan_sweep
from sweeplab.sweep.run import run_sweep
from sweeplab.sweep.storage import make_storage
from sweeplab.training import trainer
from sweeplab.training.data import Dataset
from sweeplab.training.tracking import train_and_track

PACKAGE = PROJECT_ROOT / "src" / "sweeplab"
# the in-function imports of sweeplab modules that are allowed, each for its reason
LAZY_ON_PURPOSE = {
    # torch loads only once the command line is parsed and the config checked
    ("train.py", "_hydra_main"): "sweeplab.training",
    # MLflow (seconds) in the training process only where the helper process cannot write
    ("training/mlflow_helper.py", "_apply_here"): "sweeplab.training.mlflow_store",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(node: ast.AST) -> list[str]:
    """What one import statement names: modules, and `pkg.name` for `from pkg import name`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return []


def sweeplab_imports(node: ast.AST, modules: set[str]) -> set[str]:
    """The package modules one import statement names (a `from pkg import module` included)."""
    return {name for name in imported_names(node) if name in modules}


def import_graph() -> dict[str, set[str]]:
    """{module: the sweeplab modules it imports, wherever in the file}."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            graph[name] |= sweeplab_imports(node, set(files)) - {name}
    return graph


def functions_importing(path: Path) -> dict[str, set[str]]:
    """{function name: sweeplab modules it imports inside its body}."""
    tree = ast.parse(path.read_text())
    found: dict[str, set[str]] = {}
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                found.setdefault(function.name, set()).update(
                    n for n in imported_names(node) if n.startswith("sweeplab")
                )
    return {k: v for k, v in found.items() if v}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20  # the walk found the package
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_sweeplab_modules_are_imported_at_the_top_of_each_file():
    lazy = {}
    for path in PACKAGE.rglob("*.py"):
        for function, modules in functions_importing(path).items():
            lazy[(str(path.relative_to(PACKAGE)), function)] = modules
    unexplained = {
        key: modules
        for key, modules in lazy.items()
        if not all(m.startswith(LAZY_ON_PURPOSE.get(key, "-")) for m in modules)
    }
    assert not unexplained, f"imports inside functions: {unexplained}"


def test_the_training_package_knows_nothing_of_optuna_or_the_sweep():
    for path in (PACKAGE / "training").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = imported_names(node)
            assert not any(n.startswith(("optuna", "sweeplab.sweep")) for n in names), path


# --- each default stated once -------------------------------------------------------------------

SCHEMAS = {
    "model": {"mlp": config.ModelConfig},
    "trainer": {"default": config.TrainerConfig},
    "tracking": {"mlflow": config.TrackingConfig},
    "data": config.DATA_SCHEMAS,
    "optimizer": config.OPTIMIZER_SCHEMAS,
}


def schema_default(schema: type, key: str) -> object:
    field = next(f for f in dataclasses.fields(schema) if f.name == key)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@pytest.mark.parametrize("group", sorted(SCHEMAS))
def test_group_files_state_only_what_differs_from_their_schema(group):
    files = sorted((CONF_DIR / group).glob("*.yaml"))
    assert {f.stem for f in files} == set(SCHEMAS[group])  # a schema per option, an option each
    for path in files:
        stated = yaml.safe_load(path.read_text())
        schema = SCHEMAS[group][path.stem]
        base = f"base_{path.stem}" if group in ("data", "optimizer") else f"base_{group}"
        assert stated.pop("defaults") == [base, "_self_"], path
        for key, value in stated.items():
            assert value != schema_default(schema, key), (
                f"{path}: {key}: {value!r} restates the schema"
            )


def test_the_primary_config_restates_no_default():
    stated = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    for key in set(stated) - {"defaults", "hydra"}:
        assert stated[key] != schema_default(config.Config, key), key


def restated(stated: dict, base: object, prefix: str = "") -> list[str]:
    """The keys of `stated` (a YAML body) whose value is already `base`'s (the config composed
    without them): a dataclass field is walked into, any other value compared whole."""
    found = []
    for key, value in stated.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            found += restated(value, current, f"{prefix}{key}.")
        elif value == current:
            found.append(f"{prefix}{key}: {value!r}")
    return found


@pytest.mark.parametrize(
    "path",
    sorted((CONF_DIR / "experiment").glob("*.yaml")) + sorted((CONF_DIR / "sweep").glob("*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_experiment_and_sweep_files_state_only_what_differs(path):
    """An experiment or sweep file holds deltas: each value differs from what the config would
    be without it (its own `defaults` applied)."""
    stated = yaml.safe_load(path.read_text())
    overrides = []
    for entry in stated.pop("defaults", []):
        if isinstance(entry, dict):  # "override /data: mnist"
            [(group, option)] = entry.items()
            overrides.append(f"{group.removeprefix('override /')}={option}")
        elif entry != "_self_":  # the file of its group it builds on
            overrides.append(f"{path.parent.name}={entry}")
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        base = to_config(compose("config", overrides))
    assert restated(stated, base) == [], path.name


def test_the_rule_catches_a_restated_default(tmp_path):
    """The check above would fail on the drift the layout issue found (adam.yaml restating lr)."""
    assert schema_default(config.AdamConfig, "lr") == 0.01  # the one place that says it
    assert schema_default(config.SGDConfig, "momentum") == 0.9


# --- the extension recipes (README, "Extending sweeplab") ---------------------------------------


def compose_with(conf_dir: Path, *overrides: str) -> config.Config:
    """Compose the project's config with `conf_dir` on the search path, as --config-dir does."""
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return to_config(compose("config", [f"hydra.searchpath=[file://{conf_dir}]", *overrides]))


TINY = ["trainer.epochs=2", "trainer.progress=false", "tracking.log_plots=false"]


def test_recipe_an_optimizer_is_a_schema_and_a_yaml_file(tmp_path, monkeypatch, mlflow_uri):
    @dataclasses.dataclass
    class NAdamConfig(config.OptimizerConfig):  # what the recipe adds to config.py
        name: str = "nadam"
        _target_: str = "torch.optim.NAdam"
        lr: float = 2e-3
        momentum_decay: float = 4e-3

    monkeypatch.setitem(config.OPTIMIZER_SCHEMAS, "nadam", NAdamConfig)
    (tmp_path / "optimizer").mkdir()
    (tmp_path / "optimizer" / "nadam.yaml").write_text("defaults:\n  - base_nadam\n  - _self_\n")
    cfg = compose_with(tmp_path, "optimizer=nadam", "optimizer.momentum_decay=0.01", *TINY)
    cfg.tracking.uri = mlflow_uri
    result, run_id = train_and_track(cfg)
    params = MlflowClient(mlflow_uri).get_run(run_id).data.params
    assert params["optimizer._target_"] == "torch.optim.NAdam"
    assert params["optimizer.momentum_decay"] == "0.01"
    assert len(result.history) == 2


@dataclasses.dataclass
class MoonsDataConfig(config.SampledDataConfig):  # what the recipe adds to config.py
    task = "binary"
    loader = "tests.test_layout.make_moons"
    name: str = "moons"
    noise: float = 0.1


def make_moons(cfg: MoonsDataConfig) -> Dataset:
    """The recipe's loader: two interleaved half circles."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_train + cfg.n_val + cfg.n_test
    angle = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.stack([np.cos(angle) + label, np.sin(angle) * (1 - 2 * label) + 0.5 * label], 1)
    x = torch.tensor(x + rng.normal(0, cfg.noise, x.shape), dtype=torch.float32)
    y = torch.tensor(label, dtype=torch.float32)[:, None]
    a, b = cfg.n_train, cfg.n_train + cfg.n_val
    return Dataset("moons", "binary", 1, x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def test_recipe_a_dataset_is_a_schema_a_loader_and_a_yaml_file(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.setitem(config.DATA_SCHEMAS, "moons", MoonsDataConfig)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "moons.yaml").write_text("defaults:\n  - base_moons\n  - _self_\n")
    cfg = compose_with(tmp_path, "data=moons", "data.n_train=300", *TINY)
    cfg.tracking.uri = mlflow_uri
    result, run_id = train_and_track(cfg)
    assert result.dataset.name == "moons" and result.dataset.x_train.shape == (300, 2)
    tags = MlflowClient(mlflow_uri).get_run(run_id).data.tags
    assert tags["dataset"] == "moons"


class CountingSampler(optuna.samplers.RandomSampler):
    """A sampler from outside optuna.samplers (as an OptunaHub package's would be)."""

    made = 0

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        CountingSampler.made += 1


def test_recipe_a_sampler_and_a_wrapping_pruner_are_yaml_nodes(tmp_path, mlflow_uri):
    text = (CONF_DIR / "sweep" / "synthetic.yaml").read_text()
    spec = yaml.safe_load(text)
    spec["sweep"]["sampler"] = {"_target_": "tests.test_layout.CountingSampler", "seed": 3}
    spec["sweep"]["pruner"] = {
        "_target_": "optuna.pruners.PatientPruner",
        "wrapped_pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1},
        "patience": 1,
    }
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "mine.yaml").write_text("# @package _global_\n" + yaml.safe_dump(spec))
    overrides = [
        "sweep=mine",
        f"hydra.searchpath=[file://{tmp_path}]",
        "sweep.n_trials=2",
        "sweep.study_name=recipe",
        f"tracking.uri={mlflow_uri}",
        "data.n_train=100",
        *TINY,
    ]
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        plan = plan_sweep(compose("config", overrides), overrides, "mine")
        summary = run_sweep(plan)
    assert summary.counts == {"COMPLETE": 2}
    assert CountingSampler.made >= 2  # checked by the plan, then used by the study
    study = optuna.load_study(study_name="recipe", storage=make_storage(plan.storage))
    assert len(study.trials) == 2


def test_recipe_a_metric_is_one_function_in_run_metrics(monkeypatch, make_config, mlflow_uri):
    def hidden_units_alive(model, data, chunk):  # what the recipe adds to training/trainer.py
        with torch.no_grad():
            active = model.hidden_features(data.x_val).std(0) > 1e-3
        return {"model/alive_units": float(active.sum())}

    monkeypatch.setattr(trainer, "RUN_METRICS", (*trainer.RUN_METRICS, hidden_units_alive))
    result, run_id = train_and_track(make_config("model.d_hidden=6"))
    logged = MlflowClient(mlflow_uri).get_run(run_id).data.metrics
    assert 0 <= logged["model/alive_units"] <= 6
    assert logged["model/alive_units"] == result.metrics["model/alive_units"]


def test_the_readme_shows_each_recipe():
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Extending sweeplab", 1)[1].split("\n## ", 1)[0]
    for recipe in (
        "### An optimizer",
        "### A dataset",
        "### A sampler or a pruner",
        "### A metric",
    ):
        assert recipe in section
