"""What a user sees of a sweep in the MLflow UI, checked in a real browser (issue 17).

A small synthetic sweep runs into a temporary MLflow store, `mlflow ui` serves it on 127.0.0.1,
and Debian's Chromium (driven by playwright-python) opens the pages a user opens: the runs
table, the parent run, a child run, the compare view and the parent's Optuna plots. Screenshots
of each go into $SWEEPLAB_SCREENSHOTS, else into pytest's temp folder (the path is printed).

Skipped, saying why, where /usr/bin/chromium or playwright is missing (`.ci/run` installs the
browser with apt as root; playwright comes with the `dev` extra).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from sweeplab.sweep.plan import AT_CHANCE
from sweeplab.sweep.storage import make_storage

from .test_sweep import write_sweep_file

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Headless, as root, on a machine that reaches nothing: no sandbox, no GPU, no calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STUDY = "ui"
EXPERIMENT = "sweep-ui"
TRIALS = 6
# Every lr of this space needs an exponent to be read (4.133e-05), none fits in "0.0000...".
SPACE = {
    "model.d_hidden": "int(interval(1, 16))",
    "optimizer": "adam",
    "optimizer.lr": "tag(log, interval(1e-5, 1e-4))",
    "trainer.batch_size": "choice(16, 64)",
}
PARENT_URL = re.compile(r"https?://127\.0\.0\.1:\d+/#/experiments/(\d+)/runs/([0-9a-f]{32})")
FLOAT_PARAM = re.compile(r"\d\.\d{1,3}e-0\d")
WAIT_MS = 30_000  # for a page's first content; the UI's first load compiles a lot of JavaScript


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("SWEEPLAB_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium; each test opens its pages in a fresh profile (`page`)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser: playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium):
    """A page in a new, empty profile: the UI keeps a user's choices in localStorage (its mode,
    the table's columns, expanded runs), and a new user has none."""
    context = chromium.new_context(viewport={"width": 1920, "height": 1080})
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, chromium):
    """The sweep, run as a user runs it; its store, stdout, parent run and trials."""
    folder = tmp_path_factory.mktemp("ui-sweep")
    write_sweep_file(
        folder / "conf",
        STUDY,
        {
            "study_name": STUDY,
            "params": SPACE,
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 2},
        },
    )
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeplab.sweep",
            "--config-dir",
            str(folder / "conf"),
            f"sweep={STUDY}",
            "data.n_train=200",
            "data.n_val=100",
            "data.n_test=100",
            "trainer.epochs=12",
            f"sweep.n_trials={TRIALS}",
            "sweep.stack=1",  # a trial at a time: the median pruner stops some of them
            f"tracking.uri={uri}",
            f"tracking.experiment={EXPERIMENT}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=folder,  # MLflow puts the artifacts of a new SQLite store beside the working folder
        env={**os.environ, "SWEEPLAB_OUTPUT": str(folder / "outputs")},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs(
        [experiment.experiment_id],
        f"tags.`optuna.study` = '{STUDY}' and tags.`sweeplab.role` = 'study'",
    )
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == TRIALS, [c.info.run_name for c in children]
    return {
        "folder": folder,
        "uri": uri,
        "stdout": done.stdout,
        "client": client,
        "experiment_id": experiment.experiment_id,
        "parent": parent,
        "children": sorted(children, key=lambda run: int(run.data.tags["optuna.trial"])),
    }


@contextlib.contextmanager
def serving(command: list[str], base: str, health: str):
    """`command` (a web server) running until the block ends, once `base + health` answers."""
    log = open(Path(tempfile.mkdtemp(prefix="sweeplab-server-")) / "log", "w+")
    server = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers are stopped with it, as a group
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}{health}", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"{command[0]} did not answer on {base}:\n{log.read()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


@pytest.fixture(scope="module")
def ui(sweep) -> str:
    """`mlflow ui` on the sweep's store, on a free port of 127.0.0.1; its base URL."""
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "ui", "--backend-store-uri", sweep["uri"], "--host", "127.0.0.1"]
    with serving([*command, "--port", str(port)], f"http://127.0.0.1:{port}", "/health") as base:
        yield base


# -- reading the UI -------------------------------------------------------------------------------

# Each row of the runs table (AG Grid: the pinned columns and the others are separate rows with
# the same row-index): its run id (from the run name's link), the text of each cell by column id,
# the columns whose text is cut (an ellipsis: wider than its box; a box 1 px wide hides its text
# on purpose, e.g. a colour swatch's name for screen readers), and the state icon's drawing.
READ_TABLE = """() => {
  const rows = {};
  for (const row of document.querySelectorAll('.ag-row')) {
    const r = rows[row.getAttribute('row-index')] ??= {cells: {}, cut: [], run_id: null, icon: null};
    for (const cell of row.querySelectorAll('.ag-cell')) {
      const column = cell.getAttribute('col-id');
      r.cells[column] = cell.innerText.trim();
      const boxes = [cell, ...cell.querySelectorAll('*')];
      if (boxes.some(e => e.clientWidth > 1 && e.scrollWidth > e.clientWidth + 1)) r.cut.push(column);
      const link = cell.querySelector('a[href*="/runs/"]');
      if (link) r.run_id = link.getAttribute('href').split('/runs/')[1].split(/[/?]/)[0];
    }
    const icon = row.querySelector('[col-id="runDateAndNestInfo"] svg');
    if (icon) r.icon = icon.innerHTML;
  }
  return Object.values(rows);
}"""
NAME = "attributes.`Run Name`"


def column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"


def open_runs_table(page, ui: str, sweep: dict) -> list[dict]:
    """The experiment's runs table, opened by the link the sweep printed, with no click: in the
    UI's 'Model training' mode, as the sweep's saved view shows it (its trials ranked by
    val/acc, val/acc and the searched params as columns); its rows, read by READ_TABLE."""
    path = (
        f"/#/experiments/{sweep['experiment_id']}/runs?workflowType=machine_learning"
        f"&viewStateShareKey=sweep-{STUDY}"
    )
    printed = re.search(r"its runs table: +http://127\.0\.0\.1:5000(\S+)", sweep["stdout"])
    assert printed and printed.group(1) == path, f"the sweep printed no runs-table link {path}"
    page.goto(f"{ui}{path}")
    page.wait_for_function("n => document.querySelectorAll('.ag-row').length >= n", arg=TRIALS + 1)
    close_assistant(page)
    page.wait_for_timeout(500)  # the grid lays out its columns again in the wider space
    return page.evaluate(READ_TABLE)


def close_assistant(page) -> None:
    """The 'MLflow Assistant' panel opens beside every page of a fresh profile, taking a third
    of the width (the grid then renders fewer columns)."""
    close = page.locator("button[aria-label='Close']")
    if close.count():
        close.first.click()


def artifact_image(page, ui: str, experiment_id: str, run_id: str, path: str) -> int:
    """Opens the artifact viewer on `path` (a new page load: within one load the viewer keeps
    showing the file it showed first); the naturalWidth of the image it shows (0: none)."""
    page.goto("about:blank")
    page.goto(f"{ui}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}")
    try:
        page.get_by_text(path, exact=True).first.wait_for(timeout=15_000)
        image = page.locator("img[src^='blob:']").first
        image.wait_for(state="visible", timeout=15_000)
        page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=image.element_handle())
    except Exception:  # playwright's TimeoutError: the caller's assertion says what was shown
        return 0
    close_assistant(page)
    page.wait_for_timeout(300)  # the image fades in
    return image.evaluate("i => i.naturalWidth")


def page_text(page, limit: int = 600) -> str:
    """What the page shows beside the navigation, on one line."""
    main = page.locator("main")
    text = (main.first if main.count() else page.locator("body")).inner_text()
    return " | ".join(line for line in text.splitlines() if line.strip())[:limit]


def by_run(rows: list[dict]) -> dict[str, dict]:
    return {row["run_id"]: row for row in rows if row["run_id"]}


# -- what is true today ---------------------------------------------------------------------------


def test_runs_table_lists_the_parent_and_children_with_state_and_val_acc(
    sweep, ui, page, screenshots
):
    rows = open_runs_table(page, ui, sweep)
    page.screenshot(path=screenshots / "runs_table.png")
    headers = page.locator(".ag-header-cell").evaluate_all(
        "cells => cells.map(c => c.getAttribute('col-id'))"
    )
    wanted = [column("metrics", "val/acc"), column("metrics", "epochs_run")]
    wanted += [column("params", key) for key in ("model.d_hidden", "optimizer.lr")]
    assert set(wanted) <= set(headers), f"no click: the table shows {headers}"
    shown = by_run(rows)
    parent, children = sweep["parent"], sweep["children"]
    expected = {parent.info.run_id, *(child.info.run_id for child in children)}
    assert set(shown) == expected, (
        f"runs table: expected the parent {parent.info.run_name} and its {len(children)} children, "
        f"it shows {[row['cells'].get(NAME) for row in rows]}"
    )
    icons = {}
    for run in [parent, *children]:
        row = shown[run.info.run_id]
        assert row["icon"], f"{run.info.run_name}: no state icon in its row: {row['cells']}"
        icons.setdefault(run.info.status, set()).add(row["icon"])
    assert all(len(drawings) == 1 for drawings in icons.values()), (
        f"runs of one state show different icons: { {k: len(v) for k, v in icons.items()} }"
    )
    for child in children:
        cell = shown[child.info.run_id]["cells"].get(column("metrics", "val/acc"), "")
        value = child.data.metrics["val/acc"]
        assert cell not in ("", "-") and abs(float(cell) - value) < 5e-4, (
            f"{child.info.run_name}: val/acc column reads {cell!r}, MLflow holds {value}"
        )


def test_parent_optuna_plots_load_in_the_artifact_viewer(sweep, ui, page, screenshots):
    client, parent = sweep["client"], sweep["parent"]
    plots = [a.path for a in client.list_artifacts(parent.info.run_id, "optuna")]
    assert [p for p in plots if p.endswith(".png")], f"no Optuna plots under optuna/: {plots}"
    page.goto(f"{ui}/#/experiments/{sweep['experiment_id']}/runs/{parent.info.run_id}")
    page.get_by_text(parent.info.run_id).first.wait_for()
    close_assistant(page)
    page.screenshot(path=screenshots / "parent_run.png", full_page=True)
    for path in plots:
        width = artifact_image(page, ui, sweep["experiment_id"], parent.info.run_id, path)
        page.screenshot(path=screenshots / f"parent_{path.replace('/', '_')}")
        assert width > 0, f"{path} of the parent does not load: the viewer shows {page_text(page)}"


def test_child_run_page_and_compare_view(sweep, ui, page, screenshots):
    """The pages a user compares trials on open, and are kept as screenshots."""
    children, experiment_id = sweep["children"], sweep["experiment_id"]
    child = children[0]
    page.goto(f"{ui}/#/experiments/{experiment_id}/runs/{child.info.run_id}")
    page.get_by_text(child.info.run_id).first.wait_for()
    close_assistant(page)
    page.get_by_text("val/acc").first.wait_for()
    page.get_by_role("link", name=sweep["parent"].info.run_name).first.wait_for()  # "Parent run"
    page.screenshot(path=screenshots / "child_run.png", full_page=True)
    runs = json.dumps([c.info.run_id for c in children[:4]])
    page.goto(
        f"{ui}/#/compare-runs?runs={urllib.parse.quote(runs)}"
        f"&experiments={urllib.parse.quote(json.dumps([experiment_id]))}"
    )
    page.get_by_text("Comparing 4 Runs").first.wait_for()
    page.get_by_text(children[3].info.run_name, exact=True).first.wait_for()
    close_assistant(page)
    page.wait_for_timeout(1000)  # the plot draws
    page.screenshot(path=screenshots / "compare.png", full_page=True)


def test_child_runs_are_named_by_study_and_trial(sweep):
    for child in sweep["children"]:
        trial = child.data.tags["optuna.trial"]
        assert child.info.run_name.startswith(f"{STUDY}-trial-{trial}"), child.info.run_name


# -- what issue 17 adds ---------------------------------------------------------------------------


def test_sweep_prints_the_parent_run_url_and_it_opens_the_parent(sweep, ui, page, screenshots):
    found = PARENT_URL.search(sweep["stdout"])
    assert found, (
        "the sweep's output has no line with its parent run's URL "
        f"(http://127.0.0.1:PORT/#/experiments/ID/runs/RUN_ID); its end:\n{sweep['stdout'][-800:]}"
    )
    experiment_id, run_id = found.groups()
    parent = sweep["parent"]
    assert (experiment_id, run_id) == (sweep["experiment_id"], parent.info.run_id), found.group()
    page.goto(f"{ui}/#/experiments/{experiment_id}/runs/{run_id}")
    page.get_by_text(run_id).first.wait_for()
    close_assistant(page)
    page.screenshot(path=screenshots / "printed_url.png")
    assert parent.info.run_name in page.inner_text("body"), page_text(page)


def test_float_params_read_with_four_significant_digits_and_exponent(sweep, ui, page):
    rows = open_runs_table(page, ui, sweep)
    shown = by_run(rows)
    lr = column("params", "optimizer.lr")
    for child in sweep["children"]:
        row = shown[child.info.run_id]
        cell = row["cells"].get(lr, "")
        assert FLOAT_PARAM.fullmatch(cell), (
            f"{child.info.run_name}: optimizer.lr reads {cell!r} in the runs table, "
            "expected 4 significant digits and the exponent, like 4.133e-05"
        )
        assert lr not in row["cut"], f"{child.info.run_name}: optimizer.lr {cell!r} is cut"


def test_column_search_offers_a_trial_param_once_and_trials_log_what_differs(
    sweep, ui, page, screenshots
):
    page.goto(f"{ui}/#/experiments/{sweep['experiment_id']}/runs?workflowType=machine_learning")
    page.locator(".ag-row").first.wait_for()
    close_assistant(page)
    page.get_by_role("button", name="Columns", exact=True).click()
    menu = page.locator("[role=dialog]").first
    menu.get_by_placeholder("Search columns").fill("optimizer.lr")
    page.wait_for_timeout(500)
    titles = menu.locator(".du-bois-light-tree-title").all_inner_texts()
    page.screenshot(path=screenshots / "column_search.png")
    # before issue 17 the parent's `space.optimizer.lr` came up beside the trials' param
    assert [t for t in titles if "optimizer.lr" in t] == ["optimizer.lr"], titles
    searched = {"model.d_hidden", "optimizer.lr", "trainer.batch_size"}  # ("optimizer" is fixed)
    for child in sweep["children"]:  # the compare view offers what differs between trials
        assert set(child.data.params) == searched  # (the parent holds optimizer.name=adam)


def test_trial_names_say_which_trial_and_where_it_was_pruned(sweep, ui, page):
    journal = sweep["folder"] / "outputs" / "optuna" / f"{STUDY}.journal"
    study = optuna.load_study(study_name=STUDY, storage=make_storage(str(journal)))
    pruned = {
        t.number: max(t.intermediate_values) for t in study.trials if t.state.name == "PRUNED"
    }
    assert pruned, "the sweep pruned no trial: this test needs one (change the space or pruner)"
    at_chance = {t.number for t in study.trials if AT_CHANCE in t.user_attrs}
    shown = by_run(open_runs_table(page, ui, sweep))
    for child in sweep["children"]:
        number = int(child.data.tags["optuna.trial"])
        row = shown[child.info.run_id]
        name = row["cells"].get(NAME, "").splitlines()[-1]
        expected = f"{STUDY}-trial-{number}"
        if number in pruned:
            expected += f" (pruned at epoch {pruned[number]})"
        elif number in at_chance:
            expected += " (no better than chance)"
        assert name == expected, (
            f"trial {number}: the runs table names it {name!r}, not {expected!r}"
        )
        assert NAME not in row["cut"], f"trial {number}: its name {name!r} is cut"


def test_best_trial_pictures_load(sweep, ui, page, screenshots):
    client, parent = sweep["client"], sweep["parent"]
    best = parent.data.tags.get("best_run_id")
    if best is None:
        best = max(sweep["children"], key=lambda c: c.data.metrics.get("val/acc", -1)).info.run_id
    artifacts = [a.path for a in client.list_artifacts(best)]
    for picture in ("learning_curves.png", "decision_region.png"):
        width = artifact_image(page, ui, sweep["experiment_id"], best, picture)
        page.screenshot(path=screenshots / f"best_{picture}")
        assert width > 0, (
            f"the best trial's {picture} does not load: its run's artifacts are {artifacts}; "
            f"the viewer shows {page_text(page, 300)}"
        )


def test_optuna_dashboard_names_the_objective(sweep, page, screenshots):
    """`make dashboard`'s optuna-dashboard on the sweep's journal: its plots say val/acc, not
    "Objective 0" (the study's metric names)."""
    port = free_port()
    dashboard = str(Path(sys.executable).with_name("optuna-dashboard"))
    journal = sweep["folder"] / "outputs" / "optuna" / f"{STUDY}.journal"
    command = [dashboard, "--host", "127.0.0.1", "--port", str(port), str(journal)]
    with serving(command, f"http://127.0.0.1:{port}", "/api/studies") as base:
        with urllib.request.urlopen(f"{base}/api/studies/0?after=0", timeout=10) as answer:
            study = json.load(answer)
        assert study["name"] == STUDY and study["objective_names"] == ["val/acc"]
        page.goto(f"{base}/dashboard/studies/0")
        page.get_by_text("val/acc").first.wait_for()
        page.screenshot(path=screenshots / "optuna_dashboard.png")
