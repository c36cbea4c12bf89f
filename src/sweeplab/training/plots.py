"""Pictures of a trained run, drawn from plain arrays into PNG files (no torch here).

`draw_run_pictures(pictures, folder)` writes whichever of these apply:

- `learning_curves.png`: loss and accuracy vs. epoch (the lecture's "Performance vs. epoch");
- for 2-D inputs, `decision_region.png`: the output probability over [0,1]^2 with the samples on
  top, and `hidden_units.png`: each hidden activation a_H,l over the plane, titled with its
  output weight w_O,l (the lecture's two pictures of demo 1);
- for classes, `confusion_matrix.png`; for images, `first_layer_weights.png` (each hidden unit's
  input weights as an image) and `misclassified.png`, each one mosaic image in one frame; for a
  run that distorts its training images, `distorted_images.png` (a few, and what it made of them).

The arrays come from `tracking.picture_data`, computed where the model is; the MLflow
helper process draws them while the training process goes on.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sweeplab.figures import pyplot

DPI = 100


def draw_run_pictures(pictures: dict[str, Any], folder: Path, forked: bool = False) -> list[Path]:
    """Write every picture the data allows into `folder`; return their paths. With `forked`, a
    forked process draws every other picture meanwhile (matplotlib draws on one core)."""
    jobs = [(draw_learning_curves, pictures["history"], "learning_curves.png")]
    if (plane := pictures.get("plane")) is not None:
        if plane["probability"] is not None:
            jobs.append((draw_decision_region, plane, "decision_region.png"))
        jobs.append((draw_hidden_units, plane, "hidden_units.png"))
    if (classes := pictures.get("classes")) is not None:
        jobs.append((draw_confusion_matrix, classes, "confusion_matrix.png"))
    if (images := pictures.get("images")) is not None:
        jobs.append((draw_first_layer_weights, images, "first_layer_weights.png"))
        jobs.append((draw_misclassified, images, "misclassified.png"))
    if (distortions := pictures.get("distortions")) is not None:
        jobs.append((draw_distortions, distortions, "distorted_images.png"))
    if not forked or len(jobs) < 2:
        return [draw(data, folder / name) for draw, data, name in jobs]
    # a fork starts at once with matplotlib imported; its share goes to it pickled
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        theirs = [pool.submit(draw, data, folder / name) for draw, data, name in jobs[1::2]]
        mine = [draw(data, folder / name) for draw, data, name in jobs[::2]]
        return mine + [future.result() for future in theirs]


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 1})
    pyplot().close(fig)
    return path


def draw_learning_curves(history: list[dict[str, float]], path: Path) -> Path:
    plt = pyplot()
    epochs = np.arange(1, len(history) + 1)
    kinds = [k for k in ("loss", "acc") if any(f"train/{k}" in h for h in history)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for split in ("train", "val"):
            ax.plot(epochs, [h.get(f"{split}/{kind}", np.nan) for h in history], label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.xaxis.get_major_locator().set_params(integer=True)  # no epoch 1.5 on short runs
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_yscale("log")
    fig.suptitle("Performance vs. epoch")
    fig.tight_layout()
    return _save(fig, path)


def draw_decision_region(plane: dict[str, Any], path: Path) -> Path:
    """Pr{y=1 | x} over the unit square, with the training samples of each class overlaid."""
    plt = pyplot()
    x, y = plane["x"], plane["y"]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    image = ax.imshow(
        plane["probability"], origin="lower", extent=[0, 1, 0, 1], vmin=0, vmax=1, cmap="viridis"
    )
    fig.colorbar(image, ax=ax, label="a_O = Pr{y=1 | x}")
    ax.plot(x[y == 0, 0], x[y == 0, 1], "b.", markersize=3, label="y=0")
    ax.plot(x[y == 1, 0], x[y == 1, 1], "g.", markersize=3, label="y=1")
    ax.set_xlabel("$x_0$")
    ax.set_ylabel("$x_1$")
    ax.set_title("decision region")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def draw_hidden_units(plane: dict[str, Any], path: Path) -> Path:
    """Each hidden unit's activation a_H,l over the plane, titled with its output weight."""
    plt = pyplot()
    hidden, out_weights = plane["hidden"], plane["out_weights"]
    shown = hidden.shape[2]
    cols = min(shown, 4)
    rows = -(-shown // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
    for unit, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if unit >= shown:
            ax.axis("off")
            continue
        image = ax.imshow(hidden[:, :, unit], origin="lower", extent=[0, 1, 0, 1], cmap="viridis")
        weight = ", ".join(f"{w:.2f}" for w in out_weights[:3, unit])
        ax.set_title(f"aH{unit}, wO{unit}={weight}", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    title = "hidden units"
    if shown < plane["n_hidden"]:
        title += f" (first {shown} of {plane['n_hidden']})"
    fig.suptitle(title)
    return _save(fig, path)


def draw_confusion_matrix(classes: dict[str, Any], path: Path) -> Path:
    """Counts of (true class, predicted class) on the test split."""
    plt = pyplot()
    k = classes["n_classes"]
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (classes["true"], classes["predicted"]), 1)
    fig, ax = plt.subplots(figsize=(0.75 * k + 2.5, 0.75 * k + 1.8))  # counts readable in the UI
    image = ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        if n:
            color = "white" if n > counts.max() / 2 else "black"
            ax.text(j, i, str(n), ha="center", va="center", fontsize=11, color=color)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / counts.sum()
    ax.set_title(f"test confusion matrix (accuracy {accuracy:.4f})")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return _save(fig, path)


def mosaic(tiles: np.ndarray, shape: tuple[int, int], cols: int, fill: float) -> np.ndarray:
    """Images (n, rows*cols) laid out in one array, `cols` per row, one pixel of `fill` between."""
    rows_of_tiles = -(-len(tiles) // cols)
    height, width = shape
    out = np.full((rows_of_tiles * (height + 1) - 1, cols * (width + 1) - 1), fill)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[
            r * (height + 1) : r * (height + 1) + height, c * (width + 1) : c * (width + 1) + width
        ] = tile.reshape(shape)
    return out


def draw_first_layer_weights(images: dict[str, Any], path: Path) -> Path:
    """Each hidden unit's input weights w_H,l as an image (each scaled to its own largest
    magnitude): what the unit looks for."""
    plt = pyplot()
    weights = images["weights"]
    scaled = weights / np.maximum(np.abs(weights).max(axis=1, keepdims=True), 1e-12)
    cols = int(np.ceil(np.sqrt(len(weights))))
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(mosaic(scaled, images["shape"], cols, 0.0), cmap="seismic", vmin=-1, vmax=1)
    ax.axis("off")
    ax.set_title(
        f"first-layer weights of {len(weights)} of {images['n_hidden']} hidden units "
        "(red +, blue -)"
    )
    fig.tight_layout()
    return _save(fig, path)


def draw_distortions(distortions: dict[str, Any], path: Path) -> Path:
    """Training images (top row) and, below, what the run's distortions made of them."""
    plt = pyplot()
    images, cols = distortions["images"], distortions["per_row"]
    fig, ax = plt.subplots(figsize=(max(cols, 6) * 1.0, len(images) / cols * 1.0 + 0.8))
    ax.imshow(mosaic(images, distortions["shape"], cols, float(images.min())), cmap="gray_r")
    ax.axis("off")
    settings = ", ".join(f"{key}={value:g}" for key, value in distortions["settings"].items())
    ax.set_title(f"training images (top row), distorted as trained:\n{settings}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def draw_misclassified(images: dict[str, Any], path: Path, cols: int = 6) -> Path:
    """The first misclassified test images, each labelled predicted (true)."""
    plt = pyplot()
    wrong = images["wrong_images"]
    height, width = images["shape"]
    fig, ax = plt.subplots(figsize=(cols * 1.2, max(1, -(-len(wrong) // cols)) * 1.3 + 0.6))
    if len(wrong):
        ax.imshow(mosaic(wrong, images["shape"], cols, 0.0), cmap="gray_r")
        for i, (predicted, true) in enumerate(
            zip(images["wrong_predicted"], images["wrong_true"], strict=True)
        ):
            r, c = divmod(i, cols)
            ax.text(
                c * (width + 1),
                r * (height + 1),
                f"{predicted} ({true})",
                fontsize=8,
                color="red",
                va="top",
                ha="left",
            )
    ax.axis("off")
    ax.set_title(
        f"misclassified test images: {images['n_wrong']} of {images['n_test']} (predicted (true))"
    )
    fig.tight_layout()
    return _save(fig, path)
