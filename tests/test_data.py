import gzip

import numpy as np
import pytest

from mlpbench import data
from mlpbench.network import PRESETS


def test_moons_matches_the_original_study():
    moons = data.moons()
    assert moons.n_features == 2 and len(moons.X_train) + len(moons.X_test) == 1000
    assert moons.X_train.dtype == np.float32 and moons.y_train.shape == (800, 1)
    assert set(np.unique(moons.y_train)) == {0.0, 1.0}


def test_digits_split_is_seeded_and_disjoint():
    first, again = data.digits(seed=1), data.digits(seed=1)
    assert first.X_train.shape == (1348, 64) and first.X_test.shape == (449, 64)
    assert np.array_equal(first.X_test, again.X_test)
    np.testing.assert_allclose(first.X_train.mean(axis=0), 0.0, atol=1e-5)
    std = first.X_train.std(axis=0)
    constant = std == 0  # digits has pixels that are blank in every training image
    assert 0 < constant.sum() < 64
    np.testing.assert_allclose(std[~constant], 1.0, atol=1e-4)
    assert (first.X_train[:, constant] == 0).all()
    train_rows = {row.tobytes() for row in first.X_train}
    assert sum(row.tobytes() in train_rows for row in first.X_test) < 10  # the data set has a few duplicates


def test_standardised_uses_the_training_statistics_and_leaves_constant_features_at_zero():
    X_train = np.array([[1.0, 5.0], [3.0, 5.0]], np.float32)  # mean (2, 5), std (1, 0)
    X_test = np.array([[4.0, 7.0]], np.float32)
    raw = data.Dataset("toy", X_train, np.zeros(2, np.int64), X_test, np.zeros(1, np.int64), 2)
    scaled = data.standardised(raw)
    np.testing.assert_array_equal(scaled.X_train, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(scaled.X_test, [[2.0, 2.0]])


def test_batches_cover_the_training_set_once_per_epoch():
    digits = data.digits()
    batches = list(digits.batches(500, np.random.default_rng(0)))
    assert [len(X) for X, _ in batches] == [500, 500, 348]
    seen = np.concatenate([y for _, y in batches])
    assert sorted(seen.tolist()) == sorted(digits.y_train.tolist())
    with pytest.raises(ValueError, match="batch_size"):
        next(digits.batches(0, np.random.default_rng(0)))


def test_synthetic_data_is_shaped_for_the_network():
    net = PRESETS["moons-5h300"]
    synthetic = data.synthetic(net, 64, seed=3)
    assert synthetic.X_train.shape == (64, 2) and synthetic.y_train.shape == (64, 1)
    assert synthetic.X_train.std() > 0.5


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_reads_idx_files_written_by_the_test(tmp_path, compressed):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compressed else ""
    images = {"train": rng.integers(0, 256, (12, 28, 28)), "t10k": rng.integers(0, 256, (5, 28, 28))}
    labels = {"train": rng.integers(0, 10, 12), "t10k": rng.integers(0, 10, 5)}
    for split in ("train", "t10k"):
        data.write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}", images[split])
        data.write_idx(tmp_path / f"{split}-labels-idx1-ubyte{suffix}", labels[split])
    mnist = data.mnist(tmp_path)
    assert mnist.X_train.shape == (12, 784) and mnist.X_test.shape == (5, 784)
    np.testing.assert_allclose(mnist.X_train[3], images["train"][3].reshape(-1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(mnist.y_test, labels["t10k"])


def test_mnist_reports_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.mnist(tmp_path)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as handle:
        handle.write(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match="promises 9 bytes"):
        data.read_idx(bad)
    (tmp_path / "notidx").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(tmp_path / "notidx")


def test_unknown_dataset_is_rejected():
    with pytest.raises(ValueError, match="unknown data set"):
        data.load("cifar")
    with pytest.raises(ValueError, match="path="):
        data.load("mnist")
