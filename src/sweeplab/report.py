"""Reports: a README.md with figures, generated from MLflow runs.

    python -m sweeplab.report                       # every reports/<name>/report.yaml
    python -m sweeplab.report lecture_mnist         # one of them
    python -m sweeplab.report --run lecture_mnist   # run its commands first, then write it
    make report [REPORT=lecture_mnist]  /  make reports [REPORT=...]

A report is a folder with a `report.yaml`: a title, an introduction, the commands that make its
runs (`sweeplab.train ...` / `sweeplab.sweep ...`, run as `python -m`) and its sections. Every
number and figure in a report comes from the MLflow store (the latest finished run or study of
the MLflow experiment a section names), never from the YAML. Section kinds:

- `run`: one training run: its recipe, final metrics, wall time, an epoch table, its plots;
- `grid`: a study's trials as `metric` against one parameter, a line per value of another;
- `sweep`: a study: trial counts, wall time, best parameters and metrics, Optuna's plots, the best
  value over time, an optional goal, when the objective first reached each of `firsts`, and
  the selected trial's own pictures (`best_figures`, where its trials log them);
- `references`: published results beside the best of our runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeplab.config import DISTORTIONS, PROJECT_ROOT, TrackingConfig, store_uri
from sweeplab.figures import pyplot
from sweeplab.provenance import environment_tags, git_commit, versions_text

REPORTS_DIR = PROJECT_ROOT / "reports"
SECTION_KINDS = ("run", "grid", "sweep", "references")
REQUIRED_KEYS = {
    "run": ("experiment",),
    "grid": ("experiment", "x", "series"),
    "sweep": ("experiment",),
}
RUN_TABLE_PARAMS = (
    "data.name",
    "data.n_train",
    "model.d_hidden",
    "model.activation",
    "model.dropout",
    "model.input_dropout",
    "optimizer.name",
    "optimizer.lr",
    "optimizer.weight_decay",
    "trainer.batch_size",
    "trainer.epochs",
    "trainer.lr_schedule",
    "trainer.shift_pixels",
    "seed",
)


class ReportError(RuntimeError):
    """A report cannot be written: a bad report.yaml, or its runs are missing."""


@dataclass
class Report:
    name: str
    folder: Path
    title: str
    intro: str
    commands: list[str]
    sections: list[dict[str, Any]]


def load_report(folder: Path) -> Report:
    """Read and check `folder/report.yaml`; errors name the file and the key."""
    path = folder / "report.yaml"
    if not path.is_file():
        raise ReportError(f"{path}: no such file (a report folder needs report.yaml)")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ReportError(f"{path}: not valid YAML: {err}") from None
    unknown = set(spec) - {"title", "intro", "commands", "sections"}
    if unknown:
        raise ReportError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    sections = spec.get("sections") or []
    if not sections:
        raise ReportError(f"{path}: sections: at least one section is needed")
    for i, section in enumerate(sections):
        kind = section.get("kind") if isinstance(section, dict) else None
        if kind not in SECTION_KINDS:
            raise ReportError(
                f"{path}: sections[{i}].kind={kind!r}: must be one of {', '.join(SECTION_KINDS)}"
            )
        for key in REQUIRED_KEYS.get(kind, ()):
            if not section.get(key):
                raise ReportError(f"{path}: sections[{i}].{key} is needed for kind {kind}")
    commands = spec.get("commands") or []
    for command in commands:
        module = shlex.split(command)[0] if command.strip() else ""
        if module not in ("sweeplab.train", "sweeplab.sweep"):
            raise ReportError(
                f"{path}: commands: {command!r}: must start with sweeplab.train or sweeplab.sweep"
            )
    return Report(
        folder.name,
        folder,
        spec.get("title", folder.name),
        spec.get("intro", ""),
        commands,
        sections,
    )


def run_commands(report: Report, uri: str | None = None) -> None:
    """Make the report's runs: each command as `python -m <command>`, stopping at a failure."""
    for command in report.commands:
        argv = [sys.executable, "-m", *shlex.split(command)]
        if uri:
            argv.append(f"tracking.uri={uri}")
        print(f"[{report.name}] python -m {command}", flush=True)
        done = subprocess.run(argv, cwd=PROJECT_ROOT)
        if done.returncode != 0:
            raise ReportError(f"[{report.name}] `python -m {command}` exited {done.returncode}")


# --- reading the MLflow store ---------------------------------------------------------------------


@dataclass
class Store:
    client: MlflowClient
    uri: str
    _experiment_ids: dict[str, str] = field(default_factory=dict)

    def experiment_id(self, name: str) -> str:
        if name not in self._experiment_ids:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise ReportError(f"MLflow experiment {name!r} not found in {self.uri}")
            self._experiment_ids[name] = found.experiment_id
        return self._experiment_ids[name]

    def finished_runs(self, experiment: str, extra_filter: str = "") -> list[Run]:
        query = "attributes.status = 'FINISHED'" + (f" and {extra_filter}" if extra_filter else "")
        return self.client.search_runs(
            [self.experiment_id(experiment)],
            query,
            order_by=["attributes.start_time DESC"],
            max_results=5000,
        )

    def latest_run(self, experiment: str) -> Run:
        """The latest finished run that is neither a study nor a trial."""
        for run in self.finished_runs(experiment):
            if "mlflow.parentRunId" not in run.data.tags and "sweeplab.role" not in run.data.tags:
                return run
        raise ReportError(f"MLflow experiment {experiment!r}: no finished single run in {self.uri}")

    def latest_study(self, experiment: str) -> tuple[Run, list[Run]]:
        """The latest finished study run and its trials' runs (any state)."""
        studies = self.finished_runs(experiment, "tags.`sweeplab.role` = 'study'")
        if not studies:
            raise ReportError(f"MLflow experiment {experiment!r}: no finished study in {self.uri}")
        parent = studies[0]
        trials = self.client.search_runs(
            [self.experiment_id(experiment)],
            f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=5000,
        )
        return parent, trials

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def artifact(self, run_id: str, path: str, to: Path) -> Path | None:
        """Copy one artifact of a run to `to`; None if the run has no such artifact."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except (MlflowException, OSError):
                return None
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, to)
        return to


# --- formatting -----------------------------------------------------------------------------------


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def wall_s(run: Run) -> float:
    return ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Page:
    """The report being written: markdown parts, figures, and the runs it drew from."""

    report: Report
    store: Store
    parts: list[str] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    @property
    def figures(self) -> Path:
        return self.report.folder / "figures"

    def figure(self, name: str, caption: str) -> None:
        self.parts.append(f"![{caption}](figures/{name})\n")

    def copy_artifact(self, run: Run, path: str, caption: str) -> None:
        name = Path(path).name
        if self.store.artifact(run.info.run_id, path, self.figures / name) is None:
            self.parts.append(f"_(the run logged no `{path}`)_\n")
        else:
            self.figure(name, caption)


# --- sections -------------------------------------------------------------------------------------


def section_run(page: Page, spec: dict[str, Any]) -> None:
    store = page.store
    run = store.latest_run(spec["experiment"])
    page.runs.append(run)
    run_id = run.info.run_id
    params, metrics = run.data.params, run.data.metrics
    epoch_times = [v for _, v in store.history(run_id, "time/epoch_s")]
    rows = [[key, params[key]] for key in RUN_TABLE_PARAMS if key in params]
    page.parts.append(table(["setting", "value"], rows) + "\n")

    results = [
        ["test accuracy", pct(metrics.get("test/acc"))],
        ["validation accuracy (last epoch)", pct(metrics.get("val/acc"))],
        ["epochs trained", str(len(epoch_times))],
        ["wall time of the run", duration(wall_s(run))],
        ["training time per epoch (median)", f"{1000 * statistics.median(epoch_times):.1f} ms"]
        if epoch_times
        else ["training time per epoch", "-"],
    ]
    if "test/predict_us_per_sample" in metrics:
        results.append(
            ["inference time per test sample", f"{metrics['test/predict_us_per_sample']:.2f} µs"]
        )
    if reach := spec.get("reach"):
        metric, goal = reach["metric"], float(reach["value"])
        first = next((step for step, v in store.history(run_id, metric) if v >= goal), None)
        results.append(
            [f"first epoch with {metric} >= {goal}", str(first) if first else "never reached"]
        )
    page.parts.append(table(["result", "value"], results) + "\n")

    if steps := spec.get("epochs_table"):
        by_step = {
            key: dict(store.history(run_id, key))
            for key in ("train/loss", "train/acc", "val/loss", "val/acc")
        }
        epochs = sorted(by_step["val/acc"])
        shown = epochs if steps == "all" else [s for s in steps if s in by_step["val/acc"]]
        rows = [
            [
                step,
                f"{by_step['train/loss'].get(step, float('nan')):.4f}",
                pct(by_step["train/acc"].get(step)),
                f"{by_step['val/loss'].get(step, float('nan')):.4f}",
                pct(by_step["val/acc"].get(step)),
            ]
            for step in shown
        ]
        page.parts.append(
            table(["epoch", "train loss", "train acc", "val loss", "val acc"], rows) + "\n"
        )
    if spec.get("output_weights"):
        weights = output_weights(store, run_id)
        if weights:
            page.parts.append(
                "Output weights of the hidden units (W_O, one per unit, the titles of the "
                f"hidden-unit maps): {', '.join(f'{w:+.2f}' for w in weights)}.\n"
            )
    for name in spec.get("figures", []):
        page.copy_artifact(run, name, name.removesuffix(".png").replace("_", " "))


def output_weights(store: Store, run_id: str) -> list[float]:
    """W_O of a binary-output network, from the run's logged state_dict."""
    import torch  # seconds to import, for this one section: not at the report's start-up

    with tempfile.TemporaryDirectory() as tmp:
        path = store.artifact(run_id, "model_state_dict.pt", Path(tmp) / "model.pt")
        if path is None:
            return []
        state = torch.load(path, weights_only=True)
    weight = state["output.weight"]
    return weight[0].tolist() if weight.shape[0] == 1 else []


def section_grid(page: Page, spec: dict[str, Any]) -> None:
    parent, trials = page.store.latest_study(spec["experiment"])
    page.runs.append(parent)
    x_key, series_key = spec["x"], spec["series"]
    metric = spec.get("metric", "test/acc")
    values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in trials:
        if run.info.status != "FINISHED" or metric not in run.data.metrics:
            continue
        params = run.data.params
        values[params[series_key]][float(params[x_key])].append(run.data.metrics[metric])
    if not values:
        raise ReportError(f"study run {parent.info.run_id}: no finished trial with {metric}")
    xs = sorted({x for per_x in values.values() for x in per_x})

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for series, per_x in sorted(values.items()):
        points = sorted(per_x)
        means = [sum(per_x[x]) / len(per_x[x]) for x in points]
        lows = [m - min(per_x[x]) for m, x in zip(means, points, strict=True)]
        highs = [max(per_x[x]) - m for m, x in zip(means, points, strict=True)]
        ax.errorbar(points, means, yerr=[lows, highs], marker="o", capsize=3, label=series)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean of the seeds, bars from min to max")
    ax.legend(title=series_key)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    name = f"{spec.get('name', 'grid')}.png"
    page.figures.mkdir(parents=True, exist_ok=True)
    fig.savefig(page.figures / name, dpi=90)
    plt.close(fig)
    seeds = max(len(v) for per_x in values.values() for v in per_x.values())
    header = [x_key] + [f"{s}" for s in sorted(values)]
    rows = [
        [f"{x:g}"]
        + [
            (
                f"{pct(sum(per_x[x]) / len(per_x[x]))} ({pct(min(per_x[x]))} – {pct(max(per_x[x]))})"
                if x in per_x
                else "-"
            )
            for _, per_x in sorted(values.items())
        ]
        for x in xs
    ]
    finished = sum(len(v) for per_x in values.values() for v in per_x.values())
    page.parts.append(
        f"{finished} trials ({len(xs)} values of `{x_key}` x {len(values)} of `{series_key}` x up "
        f"to {seeds} seeds), study `{parent.data.tags.get('optuna.study')}`, "
        f"{duration(wall_s(parent))} wall time. Each cell: mean {metric} (min – max over seeds).\n"
    )
    page.parts.append(table(header, rows) + "\n")
    page.figure(name, f"{metric} against {x_key}")


def section_sweep(page: Page, spec: dict[str, Any]) -> None:
    store = page.store
    parent, trials = store.latest_study(spec["experiment"])
    page.runs.append(parent)
    tags, params, metrics = parent.data.tags, parent.data.params, parent.data.metrics
    objective, _ = study_objective(params)
    counts = {  # the study logs a count only for the states its trials are in
        state: int(metrics.get(f"trials/{state}", 0)) for state in ("complete", "pruned", "fail")
    }
    space = searched_space(params)
    best = next((r for r in trials if r.info.run_id == tags.get("best_run_id")), None)
    page.parts.append(table(["setting", "value"], sweep_settings(parent, objective)) + "\n")
    searched = [[f"`{k}`", f"`{v}`"] for k, v in space.items()]
    page.parts.append(table(["searched parameter", "expression"], searched) + "\n")
    test_acc = best.data.metrics.get("test/acc") if best else None
    results = [
        [
            "trials",
            ", ".join(f"{n} {state}" for state, n in counts.items()).replace("fail", "failed"),
        ],
        ["wall time of the sweep", sweep_wall_time(parent)],
        [
            f"best {objective}",
            _metric(objective, tags.get("best_trial_value", tags.get("best_value"))),
        ],
        ["its test accuracy", pct(test_acc)],
    ]
    if best is not None:
        epochs = trial_params(parent, best).get("trainer.epochs", 0)
        results.append(["its epochs", str(int(epochs))])
        found_after = (best.info.end_time - parent.info.start_time) / 1000
        results.append(["found after", duration(found_after)])
    results += first_reached(store, parent, trials, objective, spec.get("firsts", []))
    page.parts.append(table(["result", "value"], results) + "\n")
    if best is not None:
        chosen = trial_values(best)
        best_params = [[f"`{k}`", chosen.get(k, "-")] for k in space]
        page.parts.append(
            f"Best trial: `{best.data.tags.get('optuna.trial')}` (MLflow run `{best.info.run_id}`)."
            " Rerun it with `python -m sweeplab.train --config-path outputs/sweeps/"
            f"{tags.get('optuna.study')} --config-name best`.\n"
        )
        page.parts.append(table(["parameter", "best value"], best_params) + "\n")
    if goal := spec.get("goal"):
        metric, value = goal["metric"], float(goal["value"])
        reached = best is not None and best.data.metrics.get(metric, float("-inf")) >= value
        verdict = "**reached**" if reached else "**not reached**"
        page.parts.append(
            f"Goal: {metric} >= {pct(value)} for the trial the sweep selects (best {objective}): "
            f"{verdict} ({pct(best.data.metrics.get(metric) if best else None)}).\n"
        )
    progress_figure(page, parent, trials, objective, spec)
    for name in spec.get("best_figures", []) if best is not None else []:
        page.copy_artifact(best, name, f"the selected trial: {name.removesuffix('.png')}")
    for name in spec.get("optuna_plots", []):
        page.copy_artifact(parent, f"optuna/{name}", name.removesuffix(".png").replace("_", " "))


def first_reached(
    store: Store, parent: Run, trials: list[Run], objective: str, marks: list[float]
) -> list[list[str]]:
    """A row per mark: when (since the sweep started), in which trial and at which epoch
    `objective` first reached it, by the epochs' own timestamps (taken as they ended)."""
    maximize = study_objective(parent.data.params)[1] == "maximize"
    epochs = [
        (metric, run.data.tags.get("optuna.trial"))
        for run in (trials if marks else [])
        for metric in store.client.get_metric_history(run.info.run_id, objective)
    ]
    rows = []
    for mark in map(float, marks):
        hits = sorted(
            (metric.timestamp, trial, metric.step)
            for metric, trial in epochs
            if (metric.value >= mark if maximize else metric.value <= mark)
        )
        when = "not reached"
        if hits:
            timestamp, trial, epoch = hits[0]
            since = duration((timestamp - parent.info.start_time) / 1000)
            when = f"after {since} (trial {trial}, epoch {epoch})"
        rows.append(
            [f"{objective} first {'>=' if maximize else '<='} {_metric(objective, mark)}", when]
        )
    return rows


def sweep_wall_time(parent: Run) -> str:
    invocations = int(parent.data.tags.get("sweeplab.invocations", "1"))
    if invocations == 1:
        return duration(wall_s(parent))
    return f"{duration(wall_s(parent))} from the first start to the last end, over {invocations} invocations (resumed)"


def trial_values(run: Run) -> dict[str, str]:
    """The values a trial sampled, as its `optuna.params` tag has them (`key=value ...`)."""
    values = {}
    for override in shlex.split(run.data.tags.get("optuna.params", "")):
        key, _, value = override.partition("=")
        try:
            number = float(value)
        except ValueError:
            values[key] = value
        else:
            values[key] = value if number.is_integer() and "." not in value else f"{number:.4g}"
    return values


def _metric(name: str, value: str | float | None) -> str:
    if value is None:
        return "-"
    return pct(float(value)) if name.endswith("/acc") else f"{float(value):.4g}"


def progress_figure(
    page: Page, parent: Run, trials: list[Run], objective: str, spec: dict[str, Any]
) -> None:
    """Each complete trial's objective and test accuracy at the time it ended; the best so far."""
    done = sorted(
        (
            (r.info.end_time - parent.info.start_time) / 60000,
            r.data.metrics.get(objective),
            r.data.metrics.get("test/acc"),
            r.data.tags.get("optuna.trial_state"),
        )
        for r in trials
        if r.info.end_time and objective in r.data.metrics
    )
    complete = [d for d in done if d[3] == "COMPLETE"]
    if not complete:
        return

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter([d[0] for d in complete], [d[1] for d in complete], s=14, label=f"trial {objective}")
    pruned = [d for d in done if d[3] == "PRUNED"]
    if pruned:
        ax.scatter(
            [d[0] for d in pruned],
            [d[1] for d in pruned],
            s=10,
            marker="x",
            color="gray",
            label=f"pruned ({objective} when stopped)",
        )
    best_t, best_v, best_test, steps = [], [], [], float("-inf")
    for t, v, test, _ in complete:
        if v > steps:
            steps = v
            best_t.append(t)
            best_v.append(v)
            best_test.append(test)
    last_t = done[-1][0]  # the best-so-far line runs to the last trial's end
    ax.step(
        [*best_t, last_t],
        [*best_v, best_v[-1]],
        where="post",
        color="C1",
        label=f"best {objective} so far",
    )
    ax.plot(best_t, best_test, "s", color="C3", ms=4, label="test acc of that best trial")
    if goal := spec.get("goal"):
        ax.axhline(float(goal["value"]), color="k", ls="--", lw=0.8, label="goal")
    lows = sorted(d[1] for d in complete)
    ax.set_ylim(
        lows[len(lows) // 4] - 0.005, max(max(best_v), max(filter(None, best_test))) + 0.002
    )
    ax.set_xlabel("minutes since the sweep started")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    page.figures.mkdir(parents=True, exist_ok=True)
    fig.savefig(page.figures / "progress.png", dpi=90)
    plt.close(fig)
    page.figure("progress.png", "objective over time")


def sweep_settings(parent: Run, objective: str) -> list[list[str]]:
    """The settings table of a sweep's report, from its parent run."""
    params = parent.data.params
    timeout = params.get("sweep.timeout", "None")  # unset since issue 17
    return [
        ["study", f"`{parent.data.tags.get('optuna.study')}`"],
        ["command line overrides", f"`{params.get('overrides', '')}`"],
        ["sampler", params.get("sweep.sampler.name", "-")],
        ["pruner", params.get("sweep.pruner.name", "-")],
        ["workers", params.get("sweep.workers", "-")],
        [
            "budget",
            f"{params.get('sweep.n_trials')} trials"
            + ("" if timeout == "None" else f", timeout {timeout} s"),
        ],
        ["objective", f"{objective} ({study_objective(params)[1]})"],
    ]


def study_objective(params: dict[str, str]) -> tuple[str, str]:
    """The metric a sweep's run optimised first, and its direction: `sweep.objective` and
    `sweep.direction`, or the first of `sweep.objectives` ("val/acc:maximize size:minimize");
    parents before issue 17 logged `objective`, or `sweep.objective` None for val/acc."""
    if "sweep.objectives" in params and ":" in params["sweep.objectives"]:
        metric, direction = params["sweep.objectives"].split()[0].rsplit(":", 1)
        return metric, direction
    named = [params.get("sweep.objective"), params.get("objective")]
    metric = next((name for name in named if name not in (None, "None")), "val/acc")
    return metric, params.get("sweep.direction", "maximize")


def searched_space(params: dict[str, str]) -> dict[str, str]:
    """{key: expression} of a sweep's run: its `sweep.params` ("model.d_hidden=int(4, 64) ..."),
    or the `space.<key>` params sweeps logged before issue 17."""
    text = params.get("sweep.params", "")
    pairs = [item.split("=", 1) for item in re.split(r"\s+(?=[\w.]+=)", text) if "=" in item]
    older = {k.removeprefix("space."): v for k, v in params.items() if k.startswith("space.")}
    return dict(pairs) | older


def trial_params(parent: Run, trial: Run) -> dict[str, str]:
    """A trial's params: what it logged (what its sweep searches), over its sweep's constants."""
    return parent.data.params | trial.data.params


def section_references(page: Page, spec: dict[str, Any]) -> None:
    rows = [
        [ref["source"], ref["model"], f"{ref['error']:.2f} %", f"{100 - ref['error']:.2f} %"]
        for ref in spec.get("published", [])
    ]
    for ours in spec.get("ours", []):
        if "study_experiment" in ours:
            parent, trials = page.store.latest_study(ours["study_experiment"])
            run = next(
                (r for r in trials if r.info.run_id == parent.data.tags.get("best_run_id")), None
            )
            params = trial_params(parent, run) if run else {}
        else:
            run = page.store.latest_run(ours["experiment"])
            params = run.data.params if run else {}
        if run is not None and all(r.info.run_id != run.info.run_id for r in page.runs):
            page.runs.append(run)
        acc = run.data.metrics.get("test/acc") if run else None
        error = "-" if acc is None else f"{100 * (1 - acc):.2f} %"
        rows.append([f"sweeplab ({ours['label']})", describe_run(params), error, pct(acc)])
    page.parts.append(table(["source", "model", "test error", "test accuracy"], rows) + "\n")


def describe_run(p: dict[str, str]) -> str:
    if not p:
        return "-"
    extras = [
        f"dropout {float(p['model.dropout']):.2f}" if float(p.get("model.dropout", 0)) else "",
        f"input dropout {float(p['model.input_dropout']):.2f}"
        if float(p.get("model.input_dropout", 0))
        else "",
        f"{p['trainer.lr_schedule']} lr" if p.get("trainer.lr_schedule", "none") != "none" else "",
        *(
            f"{key} {float(p[f'trainer.{key}']):g}"
            for key, _, _ in DISTORTIONS
            if float(p.get(f"trainer.{key}", 0))
        ),
        f"elastic_sigma {float(p['trainer.elastic_sigma']):g}"
        if float(p.get("trainer.elastic_alpha", 0))
        else "",
    ]
    return ", ".join(
        part
        for part in [
            f"{p.get('model.d_hidden')} HU {p.get('model.activation')}",
            f"{p.get('optimizer.name')} lr {float(p.get('optimizer.lr', 'nan')):.3g}",
            f"batch {p.get('trainer.batch_size')}",
            f"{p.get('trainer.epochs')} epochs",
            *extras,
        ]
        if part
    )


SECTIONS = {
    "run": section_run,
    "grid": section_grid,
    "sweep": section_sweep,
    "references": section_references,
}


# --- the report -----------------------------------------------------------------------------------


def provenance(page: Page) -> str:
    made_on = environment_tags()
    lines = [
        "## How this report was made",
        "",
        f"Generated by `make report REPORT={page.report.name}` "
        f"(`python -m sweeplab.report {page.report.name}`) on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} at commit "
        f"`{git_commit() or 'unknown'}`, on {made_on['sweeplab.machine']}.",
        "",
        "The runs it reads:",
        "",
    ]
    rows = []
    for run in page.runs:
        tags = run.data.tags
        trial_tags = tags if "sweeplab.machine" in tags else _any_trial_tags(page.store, run)
        rows.append(
            [
                f"`{run.info.run_name}`",
                dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC).strftime(
                    "%Y-%m-%d %H:%M UTC"
                ),
                f"`{trial_tags.get('mlflow.source.git.commit', 'not recorded')}`",
                trial_tags.get("sweeplab.machine", "not recorded"),
                versions_text(trial_tags),
            ]
        )
    lines.append(table(["MLflow run", "started", "commit", "machine", "versions"], rows))
    return "\n".join(lines) + "\n"


def _any_trial_tags(store: Store, parent: Run) -> dict[str, str]:
    """A study run carries no machine tags; its trials do."""
    found = store.client.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=1,
    )
    return found[0].data.tags if found else {}


def write_report(report: Report, store: Store) -> Path:
    """Regenerate report.folder/README.md and figures/ from the store."""
    page = Page(report, store)
    if page.figures.exists():
        shutil.rmtree(page.figures)  # no figure of an older report survives
    page.parts.append(f"# {report.title}\n")
    page.parts.append(
        "_This file is generated from the MLflow runs by "
        f"`make report REPORT={report.name}`; edit `report.yaml`, not this file._\n"
    )
    if report.intro:
        page.parts.append(report.intro.strip() + "\n")
    if report.commands:
        commands = "\n".join(f"python -m {c}" for c in report.commands)
        page.parts.append(
            f"Reproduce (`make reports REPORT={report.name}` runs these, then the report):\n\n"
            f"```bash\n{commands}\n```\n"
        )
    for spec in report.sections:
        if title := spec.get("title"):
            page.parts.append(f"## {title}\n")
        if text := spec.get("text"):
            page.parts.append(text.strip() + "\n")
        SECTIONS[spec["kind"]](page, spec)
    page.parts.append(provenance(page))
    path = report.folder / "README.md"
    path.write_text("\n".join(page.parts))
    return path


def open_store(uri: str | None) -> Store:
    resolved = store_uri(TrackingConfig(uri=uri))
    if resolved.startswith("sqlite:///") and not Path(resolved.removeprefix("sqlite:///")).exists():
        raise ReportError(f"no MLflow store at {resolved}; make the runs first (make reports)")
    return Store(MlflowClient(tracking_uri=resolved), resolved)


def report_folders(root: Path, names: list[str]) -> list[Path]:
    if not names:
        found = sorted(p.parent for p in root.glob("*/report.yaml"))
        if not found:
            raise ReportError(f"{root}: no report folder (<name>/report.yaml)")
        return found
    folders = []
    for name in names:
        folder = root / name
        if not (folder / "report.yaml").is_file():
            known = ", ".join(sorted(p.parent.name for p in root.glob("*/report.yaml")))
            raise ReportError(f"REPORT={name}: no {folder}/report.yaml (reports: {known})")
        folders.append(folder)
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sweeplab.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("names", nargs="*", help="report folders (default: all)")
    parser.add_argument("--run", action="store_true", help="run the reports' commands first")
    parser.add_argument("--uri", help="MLflow tracking URI (default: the project's SQLite store)")
    parser.add_argument("--root", type=Path, default=REPORTS_DIR, help="reports folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per figure
    try:
        reports = [load_report(f) for f in report_folders(args.root, args.names)]
        if args.run:
            for report in reports:
                run_commands(report, args.uri)
        store = open_store(args.uri)
        for report in reports:
            path = write_report(report, store)
            print(f"wrote {path}")
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
