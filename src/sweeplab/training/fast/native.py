"""The training steps of an epoch in C++ (native_loop.cpp): the hand-derived gradients and Adam.

    python -m sweeplab.training.fast    # build it now (make install does); prints where it is

`train_steps` makes exactly the ATen calls of the Python loop (`ManualBackprop`, then
`LeanAdam`'s step; weights bit-identical, tested) in one C++ loop over an epoch's batches: what
goes away is Python's cost around each of a step's ~15 calls.

torch.utils.cpp_extension compiles it on first use (a C++ compiler and ninja are needed; once per
machine, torch and Python version; kept in $TORCH_EXTENSIONS_DIR, default
~/.cache/torch_extensions). Where it cannot be built the trainer keeps the Python loop and says
why, once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

from sweeplab.training.fast.backprop import ManualBackprop
from sweeplab.training.fast.lean_adam import LeanAdam

SOURCE = Path(__file__).with_name("native_loop.cpp")
STACK_SOURCE = Path(__file__).with_name("stack_loop.cpp")  # a stack's steps (training.stack)
TASKS = {"binary": 0, "multiclass": 1, "regression": 2}
ACTIVATIONS = {"sigmoid": 0, "tanh": 1, "relu": 2}
STALE_LOCK_S = 600  # a build takes seconds; a build lock this old was left by a killed process

log = logging.getLogger(__name__)


@functools.cache
def load() -> ModuleType | None:
    """The compiled module (built, or reused from torch's cache), or None if it cannot be built
    here; the reason is logged once."""
    return build("sweeplab_native_loop", SOURCE)


@functools.cache
def load_stack() -> ModuleType | None:
    """The compiled loop of a stack's steps (stack_loop.cpp), as `load`: for this CPU's vector
    instructions, its loops over a batch are vectorised by the compiler."""
    return build(
        "sweeplab_stack_loop",
        STACK_SOURCE,
        ("-O3", "-march=native", "-fopenmp-simd", "-fno-trapping-math"),
    )


def cpu_signature() -> str:
    """A short digest of this CPU's model and instruction sets."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:12]


def build(name: str, source: Path, flags: tuple[str, ...] = ("-O2",)) -> ModuleType | None:
    """Compile `source` as the extension module `name` with torch.utils.cpp_extension; None, and
    a warning naming the cause, if that fails (no compiler, no ninja, a compile error)."""
    from torch.utils import cpp_extension  # loads setuptools: only when a loop is first loaded

    venv_bin = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and shutil.which("ninja", path=venv_bin):
        # the `ninja` package of this environment, when its bin/ is not on PATH (no activation)
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache/torch_extensions")
    directory = root / f"{name}-torch{torch.__version__}-{python}"
    if "-march=native" in flags:  # built for this CPU: another CPU gets a build of its own
        directory = directory.with_name(f"{directory.name}-{cpu_signature()}")
    directory.mkdir(parents=True, exist_ok=True)
    # torch waits, without end, for the lock of a build in progress: one killed mid-build leaves it
    lock = directory / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        log.warning("sweeplab.native: removing %s, left by a build that did not finish", lock)
        lock.unlink(missing_ok=True)
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(source)],
            extra_cflags=list(flags),
            build_directory=str(directory),
        )
    except Exception as error:  # the Python loop still works: say why, and go on without
        log.warning("sweeplab.native: %s not built, using the Python loop: %s", source.name, error)
        return None


def train_steps(
    backprop: ManualBackprop,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    order: torch.Tensor,
    y_shuffled: torch.Tensor,
    logits: torch.Tensor,
    batch_size: int,
    start: int = 0,
) -> bool:
    """Train on the batches order[start:start+batch_size], the next batch_size samples, ... to
    the epoch's end in C++, writing each batch's logits into `logits`; False (nothing done) if
    this optimizer step or these tensors need the Python loop (no optimizer state, hooks, a
    profiler, not on the CPU, ...)."""
    kernel = optimizer.fused_step_arguments() if isinstance(optimizer, LeanAdam) else None
    if (
        kernel is None
        or len(kernel.params) != len(backprop.params)
        or any(p is not q for p, q in zip(kernel.params, backprop.params, strict=True))
        or x.device.type != "cpu"
        or backprop.activation_name not in ACTIVATIONS
    ):
        return False
    module = load()
    if module is None:
        return False
    module.train_steps(
        x,
        order,
        y_shuffled,
        logits,
        batch_size,
        start,
        TASKS[backprop.task],
        ACTIVATIONS[backprop.activation_name],
        *kernel,
    )
    return True
