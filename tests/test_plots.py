"""The run's pictures (training.plots), drawn from plain arrays as the MLflow helper gets them."""

from __future__ import annotations

import numpy as np

from sweeplab.training import plots


def mnist_like_pictures(rng: np.random.Generator) -> dict:
    true = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.9, true, rng.integers(0, 10, 500))
    wrong = np.nonzero(predicted != true)[0][:36]
    return {
        "history": [
            {"train/loss": 1 / e, "val/loss": 1.1 / e, "train/acc": 1 - 0.1 / e, "val/acc": 0.9}
            for e in range(1, 6)
        ],
        "classes": {"predicted": predicted, "true": true, "n_classes": 10},
        "images": {
            "shape": (28, 28),
            "weights": rng.normal(size=(16, 784)).astype(np.float32),
            "n_hidden": 16,
            "wrong_images": rng.random((len(wrong), 784)).astype(np.float32),
            "wrong_predicted": predicted[wrong],
            "wrong_true": true[wrong],
            "n_wrong": int((predicted != true).sum()),
            "n_test": 500,
        },
    }


def test_a_forked_process_draws_the_same_pictures(tmp_path):
    """The helper has every other picture drawn by a fork of itself: the same files."""
    pictures = mnist_like_pictures(np.random.default_rng(0))
    alone, forked = tmp_path / "alone", tmp_path / "forked"
    alone.mkdir()
    forked.mkdir()
    written = plots.draw_run_pictures(pictures, alone)
    plots.draw_run_pictures(pictures, forked, forked=True)
    names = sorted(path.name for path in written)
    assert names == [
        "confusion_matrix.png",
        "first_layer_weights.png",
        "learning_curves.png",
        "misclassified.png",
    ]
    assert sorted(path.name for path in forked.iterdir()) == names
    for name in names:
        assert (forked / name).read_bytes() == (alone / name).read_bytes(), name
