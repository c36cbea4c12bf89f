"""Pictures of a trained run, saved as PNG files (MLflow logs them as artifacts).

- `learning_curves.png`: loss and accuracy vs. epoch (the lecture's "Performance vs. epoch");
- for 2-D inputs, `decision_region.png`: the output probability over [0,1]^2 with the samples on
  top, and `hidden_units.png`: each hidden activation a_H,l over the plane, titled with its
  output weight w_O,l (the lecture's two pictures of demo 1).

    save_run_plots(result, Path("out"))   # writes whichever of the above apply
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sweeplab.figures import pyplot
from sweeplab.training.trainer import TrainResult

GRID = 100  # points per axis of the plane pictures
MAX_HIDDEN_SHOWN = 16


def save_run_plots(result: TrainResult, folder: Path) -> list[Path]:
    """Write every picture that applies to this run into `folder`; return their paths."""
    written = [save_learning_curves(result.history, folder / "learning_curves.png")]
    data = result.dataset
    if data is None or result.model is None:
        return written
    if data.n_features == 2:
        if data.task == "binary":
            written.append(save_decision_region(result, folder / "decision_region.png"))
        written.append(save_hidden_units(result, folder / "hidden_units.png"))
    if data.task == "multiclass":
        written.append(save_confusion_matrix(result, folder / "confusion_matrix.png"))
    if data.image_shape is not None:
        written.append(save_first_layer_weights(result, folder / "first_layer_weights.png"))
        written.append(save_misclassified(result, folder / "misclassified.png"))
    return written


def _test_predictions(result: TrainResult) -> tuple[np.ndarray, np.ndarray]:
    data = result.dataset
    with torch.inference_mode():
        result.model.eval()
        predicted = torch.cat(
            [
                result.model(data.x_test[i : i + 8192]).argmax(1)
                for i in range(0, len(data.x_test), 8192)
            ]
        )
    return predicted.cpu().numpy(), data.y_test.cpu().numpy()


def save_confusion_matrix(result: TrainResult, path: Path) -> Path:
    """Counts of (true class, predicted class) on the test split."""
    plt = pyplot()
    predicted, true = _test_predictions(result)
    k = result.dataset.n_outputs
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    fig, ax = plt.subplots(figsize=(0.5 * k + 2, 0.5 * k + 1.5))
    image = ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        if n:
            color = "white" if n > counts.max() / 2 else "black"
            ax.text(j, i, str(n), ha="center", va="center", fontsize=6, color=color)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / counts.sum()
    ax.set_title(f"test confusion matrix (accuracy {accuracy:.4f})")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_first_layer_weights(result: TrainResult, path: Path, max_units: int = 100) -> Path:
    """Each hidden unit's input weights w_H,l as an image: what the unit looks for."""
    plt = pyplot()
    weights = result.model.hidden.weight.detach().cpu().numpy()
    shape = result.dataset.image_shape
    shown = min(len(weights), max_units)
    cols = int(np.ceil(np.sqrt(shown)))
    rows = int(np.ceil(shown / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9), squeeze=False)
    for unit, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if unit < shown:
            w = weights[unit].reshape(shape)
            limit = np.abs(w).max() or 1.0
            ax.imshow(w, cmap="seismic", vmin=-limit, vmax=limit)
    fig.suptitle(f"first-layer weights of {shown} of {len(weights)} hidden units (red +, blue -)")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_misclassified(result: TrainResult, path: Path, max_shown: int = 36) -> Path:
    """The first misclassified test images, titled predicted/true."""
    plt = pyplot()
    predicted, true = _test_predictions(result)
    wrong = np.flatnonzero(predicted != true)[:max_shown]
    images = result.dataset.x_test.cpu().numpy()
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.35), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), wrong, strict=False):
        ax.imshow(images[index].reshape(result.dataset.image_shape), cmap="gray_r")
        ax.set_title(f"{predicted[index]} (true {true[index]})", fontsize=7)
    total = int((predicted != true).sum())
    fig.suptitle(f"misclassified test images: {total} of {len(true)} (predicted (true))")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_learning_curves(history: list[dict[str, float]], path: Path) -> Path:
    plt = pyplot()
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


def _plane(result: TrainResult) -> torch.Tensor:
    """GRID x GRID points covering [0,1]^2, row-major from the bottom-left, on the model's device."""
    axis = np.linspace(0.0, 1.0, GRID)
    x0, x1 = np.meshgrid(axis, axis)
    points = np.column_stack([x0.ravel(), x1.ravel()]).astype(np.float32)
    return torch.from_numpy(points).to(next(result.model.parameters()).device)


def save_decision_region(result: TrainResult, path: Path) -> Path:
    """Pr{y=1 | x} over the unit square, with the training samples of each class overlaid."""
    plt = pyplot()
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
    plt = pyplot()
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
