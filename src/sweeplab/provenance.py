"""What a run was made with: the git commit of the checkout, the machine and library versions.

MLflow runs carry these as tags, and reports print them, so that a figure says where it came from.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from sweeplab.config import PROJECT_ROOT

VERSION_TAG = "version."  # a run's tag per library: version.torch=2.13.0


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (suffixed `-dirty` with local changes), or None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def source_tags() -> dict[str, str]:
    """Where the MLflow UI looks for a run's source and author ("Source", "Created by", the git
    commit), which MlflowClient.create_run leaves empty: the command's module, the user."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)  # None: a script, not `python -m`
    module = spec.name.removesuffix(".__main__") if spec else Path(sys.argv[0]).name
    tags = {
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": f"python -m {module}" if spec else module,
    }
    with contextlib.suppress(KeyError, OSError):  # a container's user without a name
        tags["mlflow.user"] = getpass.getuser()
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    return tags


@functools.lru_cache(maxsize=1)
def environment_tags() -> dict[str, str]:
    """What a run was made on, for reports: CPU model and cores, library versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    tags = {
        "sweeplab.machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()}",
        # a tag each: the UI's run overview cuts a long tag, and one list read "torch 2.1..."
        f"{VERSION_TAG}python": platform.python_version(),
    }
    for package in ("torch", "optuna", "mlflow", "hydra-core", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            tags[f"{VERSION_TAG}{package}"] = version(package)
    return tags


def versions_text(tags: dict[str, str]) -> str:
    """ "python 3.12.3, torch 2.13.0, ..." from a run's `version.*` tags (or, before they were
    split, its `sweeplab.versions` tag)."""
    if "sweeplab.versions" in tags:
        return tags["sweeplab.versions"]
    named = [
        f"{k.removeprefix(VERSION_TAG)} {v}" for k, v in tags.items() if k.startswith(VERSION_TAG)
    ]
    return ", ".join(named) or "not recorded"
