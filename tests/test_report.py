"""The report generator on tiny real runs: a real MLflow store, a real study, real PNGs."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sweeplab.config import CONF_DIR, register_configs
from sweeplab.report import ReportError, load_report, main, open_store, write_report
from sweeplab.sweep.plan import plan_sweep
from sweeplab.sweep.run import run_sweep
from sweeplab.training.tracking import train_and_track

from .conftest import TINY, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_sweep(mlflow_uri: str, sweep: str, experiment: str, *extra: str) -> None:
    overrides = [
        f"sweep={sweep}",
        *TINY,
        "tracking.log_plots=false",
        "tracking.log_model=false",
        f"tracking.uri={mlflow_uri}",
        f"tracking.experiment={experiment}",
        f"sweep.study_name={experiment}",
        "sweep.workers=1",
        *extra,
    ]
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        run_sweep(plan_sweep(compose("config", overrides), overrides, sweep))


def write_spec(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "report.yaml").write_text(textwrap.dedent(text))
    return folder


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One single run (plots and weights logged), a grid study and a TPE study, in one store."""
    import os

    from tests.conftest import compose_raw

    uri = f"sqlite:///{tmp_path_factory.mktemp('report') / 'mlflow.db'}"
    os.environ.setdefault("SWEEPLAB_OUTPUT", str(tmp_path_factory.mktemp("out")))
    from sweeplab.config import to_config

    cfg = to_config(
        compose_raw(
            *TINY, f"tracking.uri={uri}", "tracking.experiment=smoke-run", "trainer.epochs=4"
        )
    )
    train_and_track(cfg)
    tiny_sweep(uri, "synthetic_widths", "smoke-grid", "trainer.epochs=3", "sweep.n_trials=4")
    tiny_sweep(uri, "synthetic", "smoke-sweep", "sweep.n_trials=3")
    return uri


SPEC = """
    title: Smoke
    intro: A tiny report.
    commands:
      - sweeplab.train experiment=lecture_synthetic
    sections:
      - kind: run
        title: The run
        experiment: smoke-run
        reach: {metric: val/acc, value: 0.0}
        epochs_table: [1, 4]
        output_weights: true
        figures: [learning_curves.png, decision_region.png, hidden_units.png]
      - kind: grid
        title: Grid
        experiment: smoke-grid
        x: model.d_hidden
        series: model.activation
      - kind: sweep
        title: Study
        experiment: smoke-sweep
        goal: {metric: test/acc, value: 0.999}
        optuna_plots: [optimization_history.png]
      - kind: references
        published:
          - {source: "LeCun et al. 1998", model: "300 HU", error: 4.7}
        ours:
          - {label: "the run", experiment: smoke-run}
          - {label: "the study", study_experiment: smoke-sweep}
"""


def test_report_from_tiny_runs(tiny_runs, tmp_path):
    from mlflow.tracking import MlflowClient

    folder = write_spec(tmp_path / "smoke", SPEC)
    store = open_store(tiny_runs)
    readme = write_report(load_report(folder), store).read_text()

    run = MlflowClient(tiny_runs).search_runs([store.experiment_id("smoke-run")], max_results=1)[0]
    assert f"{100 * run.data.metrics['test/acc']:.2f} %" in readme
    assert "| epochs trained | 4 |" in readme
    assert "| trials | 3 complete, 0 pruned, 0 failed |" in readme
    assert "first epoch with val/acc >= 0.0 | 1 |" in readme
    assert "Output weights of the hidden units" in readme
    assert "python -m sweeplab.train experiment=lecture_synthetic" in readme
    assert "**not reached**" in readme  # a 3-epoch toy does not reach 99.9 % test accuracy
    assert "| LeCun et al. 1998 | 300 HU | 4.70 % | 95.30 % |" in readme
    assert "sweeplab (the study)" in readme
    assert re.search(r"\| `optimizer` \| (adam|sgd|rmsprop) \|", readme)  # best params table
    assert run.data.tags["mlflow.source.git.commit"][:12] in readme  # provenance
    assert f"torch {run.data.tags['version.torch']}, optuna " in readme
    names = {
        "learning_curves.png",
        "decision_region.png",
        "hidden_units.png",
        "grid.png",
        "progress.png",
        "optimization_history.png",
    }
    for name in names:
        assert f"(figures/{name})" in readme
        assert (folder / "figures" / name).read_bytes()[:8] == PNG_MAGIC
    assert {p.name for p in (folder / "figures").iterdir()} == names

    (folder / "figures" / "stale.png").write_bytes(PNG_MAGIC)
    write_report(load_report(folder), store)  # regenerating replaces every figure
    assert not (folder / "figures" / "stale.png").exists()


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("sections: []", "sections: at least one"),
        ("sections: [{kind: table, experiment: x}]", "sections[0].kind='table'"),
        ("sections: [{kind: grid, experiment: x, x: model.d_hidden}]", "sections[0].series"),
        ("colour: red\nsections: [{kind: run, experiment: x}]", "unknown key(s) colour"),
        ("commands: [rm -rf /]\nsections: [{kind: run, experiment: x}]", "'rm -rf /'"),
        ("sections: [{kind: run, experiment: x}", "not valid YAML"),
    ],
)
def test_bad_experiment_files_are_named(tmp_path, spec, named):
    folder = write_spec(tmp_path / "bad", spec)
    with pytest.raises(ReportError) as err:
        load_report(folder)
    assert str(err.value).startswith(str(folder / "report.yaml"))
    assert named in str(err.value)


def test_missing_runs_are_named(tiny_runs, tmp_path):
    folder = write_spec(tmp_path / "e", "sections: [{kind: sweep, experiment: smoke-run}]")
    with pytest.raises(ReportError, match="'smoke-run': no finished study"):
        write_report(load_report(folder), open_store(tiny_runs))
    folder = write_spec(tmp_path / "f", "sections: [{kind: run, experiment: nowhere}]")
    with pytest.raises(ReportError, match="'nowhere' not found"):
        write_report(load_report(folder), open_store(tiny_runs))


def test_cli_unknown_experiment_and_missing_store(tmp_path, capsys):
    write_spec(tmp_path / "real", "sections: [{kind: run, experiment: x}]")
    assert main(["--root", str(tmp_path), "nope"]) == 2
    err = capsys.readouterr().err
    assert "REPORT=nope: no" in err and "(reports: real)" in err
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["--root", str(tmp_path), "--uri", missing]) == 2
    assert "no MLflow store" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_the_commands_then_reports(tmp_path):
    """`make reports REPORT=...`: the commands run as real subprocesses, then the report."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = write_spec(
        tmp_path / "exps" / "tiny",
        f"""
        commands:
          - sweeplab.train {" ".join(TINY)} tracking.experiment=cli-run
        sections:
          - {{kind: run, experiment: cli-run, figures: [learning_curves.png]}}
        """,
    )
    done = run_cli("sweeplab.report", "--run", "--root", str(tmp_path / "exps"), "--uri", uri)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {folder / 'README.md'}" in done.stdout
    assert (folder / "figures" / "learning_curves.png").read_bytes()[:8] == PNG_MAGIC


def test_sweep_section_says_when_the_objective_first_reached_each_mark_and_shows_the_best(
    tmp_path, mlflow_uri
):
    """The shipped MNIST sweep, on a tiny IDX set: the report finds the epoch at which val/acc
    first reached a mark, and shows the pictures the selected trial logged (its distortions)."""
    from mlflow.tracking import MlflowClient

    from .test_mnist import tiny_arrays, write_idx_set

    write_idx_set(tmp_path / "digits", tiny_arrays(n_train=60, n_test=20), gz=True)
    overrides = [
        "sweep=mnist",
        "data=idx",
        f"data.root={tmp_path / 'digits'}",
        "data.n_val=20",
        "trainer.epochs=2",
        "sweep.n_trials=2",
        "sweep.workers=1",
        "sweep.timeout=null",
        f"tracking.uri={mlflow_uri}",
        "tracking.experiment=distorted-sweep",
        "sweep.study_name=distorted-sweep",
    ]
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        run_sweep(plan_sweep(compose("config", overrides), overrides, "mnist"))
    spec = """
        sections:
          - kind: sweep
            experiment: distorted-sweep
            firsts: [0.0, 1.01]
            best_figures: [distorted_images.png, misclassified.png]
    """
    folder = write_spec(tmp_path / "report", spec)
    readme = write_report(load_report(folder), open_store(mlflow_uri)).read_text()

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("distorted-sweep").experiment_id
    first = client.search_runs([experiment], "tags.`optuna.trial` = '0'")[0]
    assert first.data.params["trainer.elastic_alpha"] == "34"  # the enqueued recipe
    found = re.search(
        r"\| val/acc first >= 0\.00 % \| after [\d.]+ s \(trial (\d), epoch 1\) \|", readme
    )
    assert found is not None and found.group(1) == "0"  # trial 0's first epoch comes first
    assert "| val/acc first >= 101.00 % | not reached |" in readme
    for name in ("distorted_images.png", "misclassified.png"):
        assert f"(figures/{name})" in readme
        assert (folder / "figures" / name).read_bytes()[:8] == PNG_MAGIC
