"""A run stopped after a checkpoint and resumed from it ends with the same weights and metrics,
bit for bit, as one never stopped: on every path of the trainer (C++ loop, Python loop, autograd)
and with every state a step reads (momentum, schedules, dropout's and augmentation's draws)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sweeplab.training import trainer
from sweeplab.training.checkpoint import TrainState, remove, temporary_path
from sweeplab.training.fast import ManualSteps, NativeSteps
from sweeplab.training.trainer import AutogradSteps, Callback

from .test_mnist import tiny_arrays, write_idx_set

EPOCHS = ["trainer.epochs=7", "trainer.checkpoint_every=2"]
STOPPED_AT = 5  # after epoch 5, its checkpoint is epoch 4's: the resumed run retrains epoch 5


class Stopped(Exception):
    pass


class StopAt(Callback):
    """Stops the run at the end of an epoch, as a killed process would (after its checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            raise Stopped


class Recorder(Callback):
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, without_times(metrics)))


def without_times(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith(("time/", "test/predict"))}


def stopped_and_resumed(cfg, path):
    """The run of `cfg` stopped after STOPPED_AT epochs, then resumed from its file."""
    with pytest.raises(Stopped):
        trainer.run(cfg, [StopAt(STOPPED_AT)], checkpoint=path)
    state = TrainState.load(path)
    assert state.epoch == 4
    recorder = Recorder()
    result = trainer.run(cfg, [recorder], checkpoint=path, resume=state)
    return result, recorder


def assert_same_run(resumed, uninterrupted):
    resumed_weights = resumed.model.state_dict()
    for name, weight in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed_weights[name], weight), name
    assert [without_times(m) for m in resumed.history] == [
        without_times(m) for m in uninterrupted.history
    ]
    assert without_times(resumed.metrics) == without_times(uninterrupted.metrics)


@pytest.fixture
def idx_data(tmp_path):
    """A tiny MNIST-like image dataset (28x28 noise, 10 classes)."""
    root = tmp_path / "digits"
    write_idx_set(root, tiny_arrays(n_train=260, n_test=40))
    return ["data=idx", f"data.root={root}", "data.n_val=60", "model.d_hidden=16",
            "trainer.batch_size=50", "trainer.progress=false"]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        ([], NativeSteps),  # Adam (LeanAdam) in the C++ loop
        (["trainer.native=false"], ManualSteps),  # the same steps in the Python loop
        (["optimizer=sgd", "trainer.lr_schedule=cosine"], ManualSteps),  # momentum, a schedule
        (
            [
                "optimizer=adamw",
                "trainer.warmup_epochs=2",
                "trainer.lr_schedule=step",
                "trainer.step_size=2",
                "trainer.gamma=0.5",
            ],
            NativeSteps,
        ),  # fmt: skip
        (["model.dropout=0.3", "model.input_dropout=0.1"], AutogradSteps),  # torch's global RNG
        (["optimizer=rmsprop", "trainer.backward=autograd"], AutogradSteps),
    ],
)
def test_a_resumed_run_equals_an_uninterrupted_one(make_config, tmp_path, overrides, steps):
    cfg = make_config("model.d_hidden=8", "model.activation=relu", *EPOCHS, *overrides)
    assert type(trainer.setup(cfg).steps) is steps  # the path this case is about
    uninterrupted = trainer.run(cfg)
    resumed, _ = stopped_and_resumed(cfg, tmp_path / "run.pt")
    assert_same_run(resumed, uninterrupted)


@pytest.mark.parametrize(
    "distortions",
    [
        ["trainer.shift_pixels=2"],
        ["trainer.affine_degrees=10", "trainer.elastic_alpha=8", "trainer.shift_pixels=1"],
    ],
)
def test_a_resumed_image_run_draws_the_same_distortions_and_dropout(
    make_config, tmp_path, idx_data, distortions
):
    overrides = [*EPOCHS, *distortions, "model.dropout=0.2"]
    cfg = make_config(*idx_data, *overrides, tiny=False)
    uninterrupted = trainer.run(cfg)
    resumed, _ = stopped_and_resumed(cfg, tmp_path / "run.pt")
    assert_same_run(resumed, uninterrupted)


def test_the_callbacks_of_a_resumed_run_see_every_epoch(make_config, tmp_path):
    cfg = make_config(*EPOCHS)
    uninterrupted = trainer.run(cfg)
    _, recorder = stopped_and_resumed(cfg, tmp_path / "run.pt")
    assert recorder.epochs == [
        (i, without_times(m)) for i, m in enumerate(uninterrupted.history, 1)
    ]


def test_checkpoints_are_written_every_n_epochs_and_only_with_a_file(make_config, tmp_path):
    path = tmp_path / "run.pt"
    trainer.run(make_config("trainer.epochs=5", "trainer.checkpoint_every=3"), checkpoint=path)
    assert TrainState.load(path).epoch == 3  # not 5: the last multiple of 3
    assert not temporary_path(path).exists()
    remove(path)
    trainer.run(make_config("trainer.epochs=5", "trainer.checkpoint_every=0"), checkpoint=path)
    assert not path.exists()


def test_a_checkpoint_of_other_settings_is_refused(make_config, tmp_path):
    path = tmp_path / "run.pt"
    trainer.run(make_config("trainer.epochs=4", "trainer.checkpoint_every=2"), checkpoint=path)
    state = TrainState.load(path)
    with pytest.raises(ValueError, match="other settings"):
        trainer.run(make_config("trainer.epochs=4", "optimizer.lr=0.5"), resume=state)
    # what does not change the numbers may differ: a resumed run's own checkpoints, its threads
    resumed = trainer.run(make_config("trainer.epochs=4", "trainer.num_threads=1"), resume=state)
    assert len(resumed.history) == 4


CHECKPOINT_AND_RESUME = """
import sys
from pathlib import Path
from sweeplab.config import to_config
from sweeplab.training import trainer
from sweeplab.training.checkpoint import TrainState
from tests.conftest import compose_raw
cfg = to_config(compose_raw(*{overrides!r}))
path = Path({path!r})
trainer.run(cfg, checkpoint=path)
trainer.run(cfg, resume=TrainState.load(path))
print("torch._dynamo" in sys.modules)
"""


def test_checkpoints_of_adam_do_not_import_torch_dynamo(tmp_path):
    """torch wraps Optimizer.state_dict so that its first call imports torch._dynamo: seconds
    of a trial's first checkpoint (LeanAdam calls the plain one)."""
    overrides = ["trainer.epochs=2", "trainer.checkpoint_every=1", "trainer.progress=false"]
    script = CHECKPOINT_AND_RESUME.format(overrides=overrides, path=str(tmp_path / "run.pt"))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],  # where `tests` is a package
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
