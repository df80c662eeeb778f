"""Local IDX/.npz loading and the bundled digits."""

import gzip
import os

import numpy as np
import pytest

from keras_snn import datasets


def write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    opener = gzip.open if compress else open
    with opener(path + (".gz" if compress else ""), "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory(tmp_path, compress):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 4, 3)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 5),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 4, 3)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 2),
    }
    for name, array in arrays.items():
        write_idx(os.path.join(tmp_path, name), array, compress)
    (x, y), (x_test, y_test) = datasets.load_dataset("fashion_mnist", str(tmp_path))
    assert x.shape == (5, 4, 3, 1) and x.dtype == np.float32 and x_test.shape == (2, 4, 3, 1)
    np.testing.assert_allclose(x[..., 0], arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])


def test_npz_file_and_directory(tmp_path):
    rng = np.random.default_rng(1)
    payload = {
        "x_train": rng.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8),
        "y_train": rng.integers(0, 10, (4, 1)),
        "x_test": rng.integers(0, 256, (2, 3, 3, 3)).astype(np.uint8),
        "y_test": rng.integers(0, 10, (2, 1)),
    }
    path = os.path.join(tmp_path, "cifar.npz")
    np.savez(path, **payload)
    for source in (path, str(tmp_path)):
        (x, y), _ = datasets.load_dataset("cifar10", source)
        assert x.shape == (4, 3, 3, 3) and y.shape == (4,) and float(x.max()) <= 1.0


def test_digits_needs_no_download():
    (x, y), (x_test, y_test) = datasets.load_dataset("digits")
    assert x.shape[1:] == (8, 8, 1) and len(x) + len(x_test) == 1797
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and set(y) == set(range(10))


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset"):
        datasets.load_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="IDX"):
        datasets.load_dataset("mnist", str(tmp_path))
    bad = os.path.join(tmp_path, "bad-idx")
    with open(bad, "wb") as stream:
        stream.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        datasets.read_idx(bad)
