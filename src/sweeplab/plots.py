"""Pictures of a trained run, saved as PNG files (MLflow logs them as artifacts).

- `learning_curves.png`: loss and accuracy vs. epoch (the seed's "Performance vs. epoch");
- for 2-D inputs, `decision_region.png`: the output probability over [0,1]^2 with the samples on
  top, and `hidden_units.png`: each hidden activation a_H,l over the plane, titled with its
  output weight w_O,l (the seed's two pictures of demo 1).

    save_run_plots(result, Path("out"))   # writes whichever of the above apply
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sweeplab.trainer import TrainResult

GRID = 100  # points per axis of the plane pictures
MAX_HIDDEN_SHOWN = 16


def _pyplot():  # noqa: ANN202 - matplotlib is imported only when a picture is made
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    return plt


def save_run_plots(result: TrainResult, folder: Path) -> list[Path]:
    """Write every picture that applies to this run into `folder`; return their paths."""
    written = [save_learning_curves(result.history, folder / "learning_curves.png")]
    data = result.dataset
    if data is not None and result.model is not None and data.n_features == 2:
        if data.task == "binary":
            written.append(save_decision_region(result, folder / "decision_region.png"))
        written.append(save_hidden_units(result, folder / "hidden_units.png"))
    return written


def save_learning_curves(history: list[dict[str, float]], path: Path) -> Path:
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    kinds = [k for k in ("loss", "acc") if any(f"train/{k}" in h for h in history)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for split in ("train", "val"):
            ax.plot(epochs, [h.get(f"{split}/{kind}", np.nan) for h in history], label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_yscale("log")
    fig.suptitle("Performance vs. epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plane(result: TrainResult):  # noqa: ANN202 - a torch.Tensor; torch is imported lazily
    """GRID x GRID points covering [0,1]^2, row-major from the bottom-left, on the model's device."""
    import torch

    axis = np.linspace(0.0, 1.0, GRID)
    x0, x1 = np.meshgrid(axis, axis)
    points = np.column_stack([x0.ravel(), x1.ravel()]).astype(np.float32)
    return torch.from_numpy(points).to(next(result.model.parameters()).device)


def save_decision_region(result: TrainResult, path: Path) -> Path:
    """Pr{y=1 | x} over the unit square, with the training samples of each class overlaid."""
    import torch

    plt = _pyplot()
    model, data = result.model, result.dataset
    points = _plane(result)
    with torch.inference_mode():
        prob = torch.sigmoid(model(points))[:, 0].cpu().numpy().reshape(GRID, GRID)
    x, y = data.x_train.cpu().numpy(), data.y_train.cpu().numpy()[:, 0]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    image = ax.imshow(prob, origin="lower", extent=[0, 1, 0, 1], vmin=0, vmax=1, cmap="viridis")
    fig.colorbar(image, ax=ax, label="a_O = Pr{y=1 | x}")
    ax.plot(x[y == 0, 0], x[y == 0, 1], "b.", markersize=3, label="y=0")
    ax.plot(x[y == 1, 0], x[y == 1, 1], "g.", markersize=3, label="y=1")
    ax.set_xlabel("$x_0$")
    ax.set_ylabel("$x_1$")
    ax.set_title("decision region")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_hidden_units(result: TrainResult, path: Path) -> Path:
    """Each hidden unit's activation a_H,l over the plane, titled with its output weight."""
    import torch

    plt = _pyplot()
    model = result.model
    points = _plane(result)
    with torch.inference_mode():
        hidden = model.hidden_features(points).cpu().numpy()
    out_weights = model.output.weight.detach().cpu().numpy()
    shown = min(hidden.shape[1], MAX_HIDDEN_SHOWN)
    cols = min(shown, 4)
    rows = -(-shown // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
    for unit, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if unit >= shown:
            ax.axis("off")
            continue
        image = ax.imshow(
            hidden[:, unit].reshape(GRID, GRID), origin="lower", extent=[0, 1, 0, 1], cmap="viridis"
        )
        weight = ", ".join(f"{w:.2f}" for w in out_weights[:3, unit])
        ax.set_title(f"aH{unit}, wO{unit}={weight}", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    title = "hidden units"
    if shown < hidden.shape[1]:
        title += f" (first {shown} of {hidden.shape[1]})"
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_study_plots(study: object, folder: Path) -> list[Path]:
    """Optuna's optimisation history, parallel coordinates, parameter importances and slice plots
    as PNGs; a plot the study cannot make yet (e.g. importances from one trial) is skipped."""
    import warnings

    import optuna.visualization.matplotlib as ovm

    plt = _pyplot()
    makers = {
        "optimization_history": ovm.plot_optimization_history,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
        "param_importances": ovm.plot_param_importances,
        "slice": ovm.plot_slice,
    }
    written = []
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = make(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            print(f"note: no {name} plot ({err})")
            continue
        fig = np.atleast_1d(axes).ravel()[0].figure
        if name == "slice":
            fig.set_size_inches(max(6, 3 * len(np.atleast_1d(axes).ravel())), 3.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
