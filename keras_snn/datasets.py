"""Datasets for the examples and benchmarks, from Keras or from local files.

It ships with the package (rather than beside the examples) because users
without internet access need it too: `load_dataset(name, data_dir=...)` reads
local IDX or .npz directories (e.g. a distribution's dataset package) where
`keras.datasets` would download, so the examples, benchmarks and a user's own
scripts load data the same way on an offline machine.

`load_dataset(name, data_dir=None)` returns `((x_train, y_train), (x_test,
y_test))` with images as float32 in [0, 1], shape (N, H, W, C), and integer
labels. Without `data_dir`, MNIST, Fashion-MNIST and CIFAR-10 come from
`keras.datasets` (downloaded once by Keras), and "digits" from scikit-learn's
bundled copy (no download). With `data_dir`, the files are read from disk:
either the four IDX files of the MNIST format (optionally gzipped, as Debian's
dataset-fashion-mnist ships them in /usr/share/datasets/fashion-mnist) or an
.npz file with x_train, y_train, x_test, y_test (the layout of Keras's mnist.npz).
"""

import gzip
import os

import numpy as np

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path):
    """Read one IDX file (the MNIST format), gzipped or not, as a NumPy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * rank)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {array.size} values.")
    return array.reshape(shape)


def _find(data_dir, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    return None


def _load_local(data_dir):
    if os.path.isfile(data_dir) and data_dir.endswith(".npz"):
        npz_path = data_dir
    else:
        npz_files = sorted(f for f in os.listdir(data_dir) if f.endswith(".npz"))
        idx_paths = {key: _find(data_dir, stem) for key, stem in _IDX_FILES.items()}
        if all(idx_paths.values()):
            return {key: read_idx(path) for key, path in idx_paths.items()}
        if not npz_files:
            raise FileNotFoundError(
                f"{data_dir} holds neither the four IDX files "
                f"({', '.join(_IDX_FILES.values())}, optionally .gz) nor an .npz file."
            )
        npz_path = os.path.join(data_dir, npz_files[0])
    with np.load(npz_path) as archive:
        missing = [key for key in _IDX_FILES if key not in archive]
        if missing:
            raise ValueError(f"{npz_path} lacks arrays {missing}.")
        return {key: archive[key] for key in _IDX_FILES}


def _load_remote(name):
    if name == "digits":
        from sklearn.datasets import load_digits  # bundled with scikit-learn

        digits = load_digits()
        x = digits.images.astype("float32") / 16.0
        y = digits.target
        order = np.random.default_rng(0).permutation(len(x))
        x, y = x[order], y[order]
        split = int(0.8 * len(x))
        return {"x_train": x[:split], "y_train": y[:split], "x_test": x[split:], "y_test": y[split:]}
    import keras

    loader = {
        "mnist": keras.datasets.mnist,
        "fashion_mnist": keras.datasets.fashion_mnist,
        "cifar10": keras.datasets.cifar10,
    }[name]
    (x_train, y_train), (x_test, y_test) = loader.load_data()
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def load_dataset(name, data_dir=None):
    """Load a classification dataset as float images in [0, 1] and int labels.

    Args:
        name: "digits", "mnist", "fashion_mnist" or "cifar10" (ignored for the
            file format when `data_dir` is given, but checked).
        data_dir: optional directory (or .npz path) to read instead of Keras's
            downloader.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, images `(N, H, W, C)`.

    Example:

    >>> (x, y), (x_test, y_test) = load_dataset("digits")
    >>> x.shape[1:], x.dtype.name, int(y.max())
    ((8, 8, 1), 'float32', 9)
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASETS}.")
    arrays = _load_local(data_dir) if data_dir else _load_remote(name)
    images = {}
    for key in ("x_train", "x_test"):
        x = np.asarray(arrays[key])
        scale = 255.0 if x.dtype == np.uint8 or x.max() > 1.0 else 1.0
        x = x.astype("float32") / scale
        images[key] = x[..., None] if x.ndim == 3 else x
    labels = {key: np.asarray(arrays[key]).reshape(-1).astype("int64") for key in ("y_train", "y_test")}
    return (images["x_train"], labels["y_train"]), (images["x_test"], labels["y_test"])
