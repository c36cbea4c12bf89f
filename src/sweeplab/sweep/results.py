"""The MLflow side of a study: its parent run, and what the sweep leaves when it ends.

One parent run per study holds the sweep's settings and search space as params, the best value
by trial number (logged by the workers), and at the end `trials.csv`, Optuna's plots under
`optuna/` and `best.yaml`, the best trial's full config, which `python -m sweeplab.train` reruns.
The same files are written to `outputs/sweeps/<study>/`.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import optuna
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeplab.config import (
    Config,
    ConfigError,
    SweepConfig,
    output_dir,
    store_uri,
    to_yaml,
)
from sweeplab.figures import IMPORTING_MATPLOTLIB, pyplot
from sweeplab.provenance import source_tags
from sweeplab.redaction import without_secrets
from sweeplab.serving import save_pyfunc
from sweeplab.sweep.plan import SweepPlan, compose_trial, trial_param_keys, trial_run_name
from sweeplab.sweep.space import describe, to_overrides
from sweeplab.sweep.storage import best_or_none, wait_for_orphaned_helpers
from sweeplab.training.mlflow_helper import Helper
from sweeplab.training.mlflow_store import MAX_BATCH, connect
from sweeplab.training.tracking import (
    NOTE_TAG,
    PARENT_TAG,
    TrackedRun,
    param_text,
    run_params,
    train,
)
from sweeplab.training.trainer import TrainResult

FRONT_TAG = "sweeplab.pareto"  # on a trial's run: whether the trial is on the Pareto front
FRONT_ATTR = "pareto_front"  # on the study: the trials tagged on the front
VIEW_TAG = "mlflow.sharedViewState."  # an experiment's tag: a runs-table view the UI opens


def mlflow_client(plan: SweepPlan) -> tuple[MlflowClient, str]:
    return connect(store_uri(plan.tracking), plan.tracking.experiment, str(output_dir()))


def failed_before_training(
    plan: SweepPlan, parent_run_id: str, trial: optuna.Trial, values: dict[str, Any], err: Exception
) -> None:
    """The MLflow run of a trial that failed before it could train (the schema refused its
    combination of values): FAILED, with the error, its traceback and the values, so that the
    runs table misses no trial."""
    client, experiment_id = mlflow_client(plan)
    name = trial_run_name(plan.study_name, trial.number, TrialState.FAIL, None)
    tags = {
        PARENT_TAG: parent_run_id,
        "sweeplab.role": "trial",
        "optuna.study": plan.study_name,
        "optuna.trial": str(trial.number),
        "optuna.trial_state": TrialState.FAIL.name,
        "optuna.params": " ".join(to_overrides(values))[:5000],
        "failure_reason": without_secrets(f"{type(err).__name__}: {err}")[:5000],
        NOTE_TAG: f"Failed before training: {without_secrets(str(err))}",
    }
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    client.log_text(run.info.run_id, without_secrets(text), "traceback.txt")
    client.set_terminated(run.info.run_id, "FAILED")
    trial.set_user_attr("mlflow_run_id", run.info.run_id)


def find_or_create_parent(plan: SweepPlan, study: optuna.Study) -> str:
    """The study's MLflow run: created on the first start, reused (set RUNNING) on resume."""
    client, experiment_id = mlflow_client(plan)
    share_runs_view(plan, client, experiment_id)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
            if "failure_reason" in client.get_run(run_id).data.tags:  # why the last start ended
                client.delete_tag(run_id, "failure_reason")
            return run_id
        except MlflowException:
            print(
                f"note: the study's MLflow run {run_id} is gone; starting a new one",
                file=sys.stderr,
            )
    created = client.create_run(
        experiment_id,
        run_name=f"sweep-{plan.study_name}",
        tags={"sweeplab.role": "study", "optuna.study": plan.study_name, **source_tags()},
    )
    run_id = created.info.run_id
    params = parent_params(plan)
    batch = [Param(k, without_secrets(str(v))[:6000]) for k, v in params.items()]
    for i in range(0, len(batch), MAX_BATCH):
        client.log_batch(run_id, params=batch[i : i + MAX_BATCH])
    study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id


def runs_view(plan: SweepPlan) -> str:
    """The name of the study's runs-table view, which its printed link opens (`ui_link`)."""
    return f"sweep-{plan.study_name}"


def share_runs_view(plan: SweepPlan, client: MlflowClient, experiment_id: str) -> None:
    """Save the runs table a new user should see as a view of the experiment (what the UI's own
    "Share" does): the trials ranked by the objective, with the objectives, the epochs each
    ran and the searched params as columns. A fresh browser opens the table with no metric
    column, and no link parameter adds one."""
    columns = [
        *(f"metrics.`{metric}`" for metric, _ in plan.objectives),
        "metrics.`epochs_run`",
        *(f"params.`{key}`" for key in trial_param_keys(plan.space)),
        "attributes.`Duration`",
    ]
    metric, direction = plan.objectives[0]
    # the name column wide enough for the longest name a trial gets, about 8 px a letter (the
    # UI applies the widths of the columns `columnOrder` lists)
    longest = trial_run_name(plan.study_name, 9999, TrialState.COMPLETE, None, at_chance=True)
    name = "attributes.`Run Name`"
    state = {
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": direction == "minimize",
        "selectedColumns": columns,
        "columnOrder": [name],
        "columnWidths": {name: 8 * len(longest) + 50},
    }
    now = int(time.time() * 1000)
    view = {"name": runs_view(plan), "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG + runs_view(plan), json.dumps(view))


def parent_params(plan: SweepPlan) -> dict[str, Any]:
    """The sweep's run's params: its settings in use (none unset or empty), each under one
    name, its search space as one param, the constants every trial shares and the command
    line's overrides. The study's name is its `optuna.study` tag."""
    settings = to_flat_dict_sweep(plan.settings)
    for alias in ("n_jobs", "study_name", "objective", "direction", "objectives", "storage"):
        del settings[alias]
    params = {f"sweep.{k}": v for k, v in settings.items() if v is not None and v != []}
    # one param: `space.<key>` params came up beside the trials' own when searching columns
    params["sweep.params"] = " ".join(f"{k}={e}" for k, e in plan.space.expressions.items())
    # resolved: the objectives (`optimized_metric`, else val/acc), the storage (null: the
    # journal file), the workers (`n_jobs` is its alias)
    if plan.multi:
        params["sweep.objectives"] = " ".join(f"{m}:{d}" for m, d in plan.objectives)
    else:
        params["sweep.objective"], params["sweep.direction"] = plan.objectives[0]
    params["sweep.storage"] = plan.storage
    params["sweep.workers"] = plan.workers
    constants = sweep_constants(plan)
    constants.pop("optimized_metric", None)
    params |= {key: param_text(value) for key, value in constants.items()}
    params["overrides"] = " ".join(plan.overrides)
    return params


def sweep_constants(plan: SweepPlan) -> dict[str, Any]:
    """The config values all trials share (equal at every corner of the space), but those each
    trial logs itself (`tracking.params`): the sweep's run holds them once."""
    if plan.example is None:
        return {}
    logged_by_trials = set(plan.example.tracking.params or ())
    every_param = [replace(c, tracking=replace(c.tracking, params=None)) for c in plan.corners]
    first, *others = map(run_params, every_param)
    return {
        key: value
        for key, value in first.items()
        if key not in logged_by_trials and all(key in o and o[key] == value for o in others)
    }


def count_invocation(plan: SweepPlan, parent_run_id: str) -> None:
    """Tag the study's run with how many times the sweep was started (resumes included)."""
    client, _ = mlflow_client(plan)
    before = client.get_run(parent_run_id).data.tags.get("sweeplab.invocations", "0")
    client.set_tag(parent_run_id, "sweeplab.invocations", str(int(before) + 1))


def to_flat_dict_sweep(settings: SweepConfig) -> dict[str, Any]:
    """The sweep's settings as params, `sampler.name` and the like; the space is logged apart."""
    flat = {}
    for key, value in OmegaConf.to_container(OmegaConf.structured(settings)).items():
        if key == "params":
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def close_orphan_runs(plan: SweepPlan, study: optuna.Study) -> None:
    """MLflow runs of trials that died with their process: RUNNING -> KILLED (by the dead
    process's helper, or here when no helper is left to)."""
    client, _ = mlflow_client(plan)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    wait_for_orphaned_helpers(failed)
    for trial in failed:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "failure_reason", "its worker died (trial failed on resume)")
            client.set_tag(run_id, "optuna.trial_state", "FAIL")
            client.set_terminated(run_id, "KILLED")


@dataclass
class SweepSummary:
    study_name: str
    stop_reason: str
    counts: dict[str, int]
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    best_run_id: str | None = None
    best_test: dict[str, float] | None = None
    best_config_path: Path | None = None
    best_config: Config | None = None  # the config that retrains the best trial (best.yaml)
    parent_run_id: str | None = None
    experiment_id: str | None = None  # the parent's and its trials' MLflow experiment
    wall_s: float = 0.0
    stacked: tuple[int, int] = (0, 0)  # trials trained in stacks, and how many stacks
    front: list[ParetoPoint] = field(default_factory=list)  # with several objectives


@dataclass
class ParetoPoint:
    """A trial of a multi-objective study's Pareto front, and the YAML that reruns it."""

    number: int
    values: list[float]
    params: dict[str, Any]
    config_path: Path | None


def state_counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """{"COMPLETE": 18, "PRUNED": 2}: how many trials are in each state (the states they are in)."""
    return {state.name: n for state in TrialState if (n := sum(t.state == state for t in trials))}


def report(
    plan: SweepPlan, study: optuna.Study, parent_run_id: str, reason: str, plots: list[Path]
) -> SweepSummary:
    """Trials CSV, Optuna's plots (`save_study_plots`) and the best trial's config, into the
    parent run and outputs/."""
    client, _ = mlflow_client(plan)
    trials = study.get_trials(deepcopy=False)
    counts = state_counts(trials)
    stacks = [t.user_attrs["stack"] for t in trials if "stack" in t.user_attrs]
    summary = SweepSummary(plan.study_name, reason, counts, parent_run_id=parent_run_id)
    summary.stacked = (len(stacks), len(set(stacks)))
    folder = sweep_folder(plan.study_name)
    write_trials_csv(trials, folder / "trials.csv", [metric for metric, _ in plan.objectives])
    client.log_artifact(parent_run_id, str(folder / "trials.csv"))
    for path in plots:
        client.log_artifact(parent_run_id, str(path), "optuna")
    if plan.multi:
        summary.front = write_pareto(plan, study, folder)
        tag_front(client, study, trials, [p.number for p in summary.front])
        for path in [folder / "pareto.csv", *(p.config_path for p in summary.front)]:
            if path is not None:
                client.log_artifact(parent_run_id, str(path), "pareto")
    best = best_or_none(study)
    if best is not None:
        try:
            cfg = rerun_config(plan, best)
        except ConfigError as err:  # e.g. conf/ changed under a long sweep
            print(f"warning: the best trial's config no longer composes: {err}", file=sys.stderr)
        else:
            path = folder / "best.yaml"
            path.write_text(best_config_yaml(plan, best, cfg, folder))
            client.log_artifact(parent_run_id, str(path))
            summary.best_config_path, summary.best_config = path, cfg
        summary.best_value = best.value
        summary.best_params = dict(best.params)
        summary.best_run_id = best.user_attrs.get("mlflow_run_id")
        summary.best_test = {  # test metrics, and with repeats standard deviations
            k: v for k, v in best.user_attrs.items() if k.startswith("test/") or k.endswith("_std")
        }
        for key, value in {
            "best_trial": str(best.number),
            # not "best_value": that is the metric of the best so far, by trial number
            "best_trial_value": f"{best.value:.6g}",
            "best_run_id": str(summary.best_run_id),
        }.items():
            client.set_tag(parent_run_id, key, value)
    for state, count in counts.items():
        client.log_metric(parent_run_id, f"trials/{state.lower()}", count)
    client.set_tag(parent_run_id, NOTE_TAG, sweep_note(plan, summary))
    return summary


def tag_front(
    client: MlflowClient,
    study: optuna.Study,
    trials: list[optuna.trial.FrozenTrial],
    front: list[int],
) -> None:
    """`sweeplab.pareto=true` on the runs of the front's trials (a filter in the MLflow UI:
    `tags.sweeplab.pareto = "true"`); "false" on those a resume's trials pushed off it."""
    before = study.user_attrs.get(FRONT_ATTR, [])
    for number in sorted(set(front) ^ set(before)):
        if (run_id := trials[number].user_attrs.get("mlflow_run_id")) is not None:
            client.set_tag(run_id, FRONT_TAG, str(number in front).lower())
    study.set_user_attr(FRONT_ATTR, front)


def write_pareto(plan: SweepPlan, study: optuna.Study, folder: Path) -> list[ParetoPoint]:
    """The Pareto front (Optuna's `best_trials`: of the feasible trials, those no other beats
    on every objective) by the first objective: `pareto.csv`, and `pareto-<trial>.yaml` that
    reruns each, in the sweep's folder (a resume's front replaces the last one's)."""
    for stale in folder.glob("pareto-*.yaml"):
        stale.unlink()
    sign = -1 if plan.objectives[0][1] == "maximize" else 1
    front = sorted(study.best_trials, key=lambda t: sign * t.values[0])
    points = []
    for trial in front:
        name = f"pareto-{trial.number}"
        path: Path | None = folder / f"{name}.yaml"
        try:
            path.write_text(best_config_yaml(plan, trial, rerun_config(plan, trial), folder, name))
        except ConfigError as err:  # e.g. conf/ changed under a long sweep
            print(
                f"warning: trial {trial.number}'s config no longer composes: {err}", file=sys.stderr
            )
            path = None
        points.append(ParetoPoint(trial.number, list(trial.values), dict(trial.params), path))
    metrics = [metric for metric, _ in plan.objectives]
    keys = sorted({key for p in points for key in p.params})
    with (folder / "pareto.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", *metrics, *(f"params_{k}" for k in keys), "config"])
        for p in points:
            row = [p.number, *p.values, *(p.params.get(k, "") for k in keys), p.config_path or ""]
            writer.writerow(row)
    return points


def sweep_note(plan: SweepPlan, summary: SweepSummary) -> str:
    """The parent run's description: the study's trials, its best, where its files are."""
    counts = ", ".join(f"{n} {state.lower()}" for state, n in summary.counts.items())
    best = (
        f" The best {plan.objective} is {summary.best_value:.4g} ({describe(summary.best_params)})."
        if summary.best_value is not None
        else ""
    )
    if plan.multi:
        return (
            f"Optuna study `{plan.study_name}`: {counts} trials ({summary.stop_reason}), "
            f"{' vs '.join(m for m, _ in plan.objectives)}: {len(summary.front)} trials on the "
            "Pareto front. Its trials are the nested runs; `optuna/pareto_front.png` draws the "
            "front, `pareto/pareto.csv` lists it, `pareto/pareto-<trial>.yaml` reruns each with "
            "`python -m sweeplab.train --config-path <folder> --config-name pareto-<trial>`."
        )
    return (
        f"Optuna study `{plan.study_name}`: {counts} trials ({summary.stop_reason}).{best} "
        "Its trials are the nested runs; `optuna/` holds the study's plots, `best.yaml` reruns the "
        "best trial with `python -m sweeplab.train --config-path <folder> --config-name best`."
    )


def rerun_config(plan: SweepPlan, trial: optuna.trial.FrozenTrial) -> Config:
    """The config that retrains `trial` (best.yaml): pictures and weights logged, its run tagged
    with its study and trial."""
    cfg = compose_trial(plan, trial.params)
    # a stacked trial trained on its stack's batch order: the rerun takes the same
    cfg.trainer.shuffle_seed = trial.user_attrs.get("trainer.shuffle_seed")
    cfg.tracking.log_plots = cfg.tracking.log_model = True  # what a sweep's trials skip
    cfg.tracking.params = None  # a single run logs every param
    cfg.tracking.tags = {
        "sweeplab.role": "rerun",
        "optuna.study": plan.study_name,
        "optuna.trial": str(trial.number),
    }
    return cfg


def picture_best_trial(
    plan: SweepPlan, study: optuna.Study, helper: Helper, summary: SweepSummary
) -> None:
    """The best trial's pictures, weights and MLflow model, into its own run: its config
    (`summary.best_config`) retrained in this process (training is deterministic), tagged with
    the value the retraining reached; the model registered as `sweep.register_model` if set."""
    best = best_or_none(study)
    run_id = best.user_attrs.get("mlflow_run_id") if best is not None else None
    cfg = summary.best_config
    if run_id is None or cfg is None:
        return
    print(f"retraining the best trial ({best.number}) for its pictures and model")
    result = train(cfg)
    key = f"pictures-{plan.study_name}-{best.number}"
    helper.send(("adopt", key, store_uri(cfg.tracking), run_id, False))
    TrackedRun(helper, key).log_artifacts(result, cfg)
    again = result.metrics.get(plan.objective, float("nan"))
    shown = f"retrained: {plan.objective}={again:.6g} (the trial: {best.value:.6g})"
    helper.send(("tags", key, {"sweeplab.pictures": shown}))
    if not math.isclose(again, best.value, rel_tol=1e-6):  # repeats: their mean; a seed: one
        print(f"note: the best trial's pictures are of a retraining that reached {again:.6g}")
    log_model(plan, result, cfg, run_id)
    helper.sync()


def log_model(plan: SweepPlan, result: TrainResult, cfg: Config, run_id: str) -> None:
    """The network as an MLflow pyfunc model under the run's `model/` (`serving`), registered
    in the Model Registry as `sweep.register_model` if set."""
    client, _ = mlflow_client(plan)
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(run_id, str(save_pyfunc(result, cfg, Path(tmp) / "model")), "model")
    name = plan.settings.register_model
    if name:
        with contextlib.suppress(MlflowException):  # registered by an earlier sweep
            client.create_registered_model(name)
        source = f"{client.get_run(run_id).info.artifact_uri}/model"
        version = client.create_model_version(name, source, run_id=run_id)
        print(
            f"registered as model '{name}' version {version.version}: models:/{name}/{version.version}"
        )


def write_trials_csv(
    trials: list[optuna.trial.FrozenTrial], path: Path, objectives: list[str]
) -> None:
    """One row per trial, as Optuna's `trials_dataframe` has them (without loading pandas):
    number, value (with several objectives `values_<metric>` each), state, start, duration,
    then params_* and user_attrs_* columns."""
    params = sorted({key for t in trials for key in t.params})
    attrs = sorted({key for t in trials for key in t.user_attrs})
    values = ["value"] if len(objectives) == 1 else [f"values_{m}" for m in objectives]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["number", *values, "state", "datetime_start", "duration_s"]
            + [f"params_{key}" for key in params]
            + [f"user_attrs_{key}" for key in attrs]
        )
        for t in trials:
            duration = t.duration.total_seconds() if t.duration is not None else ""
            writer.writerow(
                [
                    t.number,
                    *(t.values or [""] * len(values)),
                    t.state.name,
                    t.datetime_start,
                    duration,
                ]
                + [t.params.get(key, "") for key in params]
                + [t.user_attrs.get(key, "") for key in attrs]
            )


def best_config_yaml(
    plan: SweepPlan, best: optuna.trial.FrozenTrial, cfg: Config, folder: Path, name: str = "best"
) -> str:
    """best.yaml (<name>.yaml): the trial's whole config, headed by how it was found and how to
    rerun it."""
    reached = " ".join(
        f"{m}={v:.6g}" for (m, _), v in zip(plan.objectives, best.values, strict=True)
    )
    kind = "Pareto-optimal trial" if plan.multi else "Best trial"
    header = (
        f"# {kind} {best.number} of study '{plan.study_name}': {reached}\n"
        f"# params: {' '.join(to_overrides(best.params))}\n"
        f"# rerun:  python -m sweeplab.train --config-path {folder} --config-name {name}\n"
    )
    hydra_section = (
        "hydra:\n  run:\n    dir: ${sweeplab_output:}/hydra/${now:%Y-%m-%d}/${now:%H-%M-%S}\n"
    )
    return header + to_yaml(cfg) + hydra_section


def load_plotting() -> tuple[ModuleType, type]:
    """Optuna's matplotlib plots and its PED-ANOVA evaluator, with matplotlib and scikit-learn
    (seconds to import: only in the process that reports, not in every worker's start-up)."""
    with IMPORTING_MATPLOTLIB:  # the sweep's main thread loads them early, in a thread of its own
        import optuna.visualization.matplotlib as optuna_plots
        from optuna.importance import PedAnovaImportanceEvaluator

        pyplot()
    return optuna_plots, PedAnovaImportanceEvaluator


def readable_log_ticks(ax: Any) -> None:
    """Labels 1, 2 and 5 of each decade on a log x axis spanning about a decade, and three or
    four plain ticks on one spanning less than two of those: there matplotlib labels every
    minor tick or ten linear ones ("5x10^-5 6x10^-5 ..."), which overlap in a slice plot's
    panel (over more decades it labels only the decades)."""
    from matplotlib import ticker  # loaded with the plots (load_plotting), not at start-up

    low, high = ax.get_xlim()
    if ax.get_xscale() != "log" or high / low >= 30:
        return
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    round_ticks = [m * 10.0**d for d in decades for m in (1, 2, 5) if low <= m * 10.0**d <= high]
    if len(round_ticks) >= 2:
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=3, steps=[1, 2, 5, 10]))
    ax.xaxis.set_major_formatter(
        ticker.LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(math.inf, math.inf))
    )
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def sweep_folder(study_name: str) -> Path:
    """outputs/sweeps/<study>: the sweep's files, beside the copies in its MLflow parent run."""
    folder = output_dir() / "sweeps" / study_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_study_plots(study: optuna.Study, study_name: str, objectives: list[str]) -> list[Path]:
    """Optuna's plots of the study (`study_figures`) as PNGs in the sweep's folder."""
    folder = sweep_folder(study_name)
    plt = pyplot()
    written = []
    for name, fig in study_figures(study, objectives).items():
        path = folder / f"{name}.png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # not tight_layout: it lays the panels over the slice plot's colour bar
            fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def study_figures(study: optuna.Study, objectives: list[str]) -> dict[str, Any]:
    """Optuna's optimisation history, parallel coordinates, parameter importances and slice plots,
    their value axis named by the (first) objective, sized to their number of parameters; with
    several objectives also the Pareto front, its axes named. A plot the study cannot make yet
    (e.g. importances from one trial) is skipped."""
    optuna_plots, PedAnovaImportanceEvaluator = load_plotting()  # noqa: N806 - a class
    first = {"target_name": objectives[0]}
    if len(objectives) > 1:  # Optuna's single-value plots need the value to show
        first["target"] = lambda trial: trial.values[0]
    makers = {
        "optimization_history": functools.partial(optuna_plots.plot_optimization_history, **first),
        "parallel_coordinate": functools.partial(optuna_plots.plot_parallel_coordinate, **first),
        # PED-ANOVA: Optuna's fast importance evaluator (its default fANOVA fits a forest)
        "param_importances": functools.partial(
            optuna_plots.plot_param_importances, evaluator=PedAnovaImportanceEvaluator(), **first
        ),
        "slice": functools.partial(optuna_plots.plot_slice, **first),
    }
    if len(objectives) > 1:
        makers["pareto_front"] = functools.partial(
            optuna_plots.plot_pareto_front, target_names=objectives
        )
    n_params = len({name for t in study.get_trials(deepcopy=False) for name in t.params})
    sizes = {  # inches: a panel or an axis per parameter, their labels apart
        "parallel_coordinate": (max(8.0, 1.7 * (n_params + 1)), 5.5),
        "slice": (3.0 * n_params + 1.5, 3.5),
    }
    figures = {}
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = make(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            print(f"note: no {name} plot ({err})")
            continue
        fig = np.atleast_1d(axes).ravel()[0].figure
        fig.set_size_inches(*sizes.get(name, (8.0, 5.0)))
        for ax in fig.axes:
            readable_log_ticks(ax)
        figures[name] = fig
    return figures
