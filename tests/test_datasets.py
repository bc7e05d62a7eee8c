"""MNIST loading from IDX files (offline copy, user paths, download) and digits."""
import gzip
import os
import struct

import numpy as np
import pytest

from mxprivacy import DatasetError, datasets


def _write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                    *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def _fake_mnist(folder, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for key, stem in datasets.MNIST_FILES.items():
        n = 6 if key.startswith("train") else 3
        arr = rng.integers(0, 255, size=(n, 28, 28)) if "images" in key else np.arange(n) % 10
        _write_idx(folder / (stem + (".gz" if compress else "")), arr, compress)


@pytest.mark.slow
def test_offline_mnist_canonical_content(data_dir):
    (xtr, ytr), (xte, yte) = datasets.load_mnist(data_dir, download=False)
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert list(ytr[:5]) == [5, 0, 4, 1, 9] and list(yte[:5]) == [7, 2, 1, 0, 4]
    assert xtr.mean() == pytest.approx(33.318, abs=1e-3)


@pytest.mark.parametrize("compress", [True, False])
def test_user_directory_and_env(tmp_path, monkeypatch, compress):
    _fake_mnist(tmp_path / "mnist", compress)
    (xtr, ytr), (xte, _) = datasets.load_mnist(str(tmp_path), download=False)
    assert xtr.shape == (6, 28, 28) and list(ytr) == [0, 1, 2, 3, 4, 5]
    monkeypatch.setenv("MXPRIVACY_DATA", str(tmp_path))
    assert datasets.load_mnist(download=False)[1][0].shape == (3, 28, 28)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DatasetError, match="MXPRIVACY_DATA"):
        datasets.load_mnist(str(tmp_path), download=False)
    _fake_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DatasetError):
        datasets.load_mnist(str(tmp_path), download=False)


def test_download_from_mirror(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    _fake_mnist(source)
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", ("file:///nonexistent/", source.as_uri() + "/"))
    target = tmp_path / "home"
    (xtr, _), _ = datasets.load_mnist(str(target))
    assert xtr.shape == (6, 28, 28)
    assert sorted(p.name for p in (target / "mnist").iterdir()) == sorted(
        s + ".gz" for s in datasets.MNIST_FILES.values())  # no temporary files left
    umask = os.umask(0)
    os.umask(umask)
    for path in (target / "mnist").iterdir():  # the umask default, not mkstemp's 0600
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_corrupt_download_leaves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    source.mkdir()
    for stem in datasets.MNIST_FILES.values():
        (source / (stem + ".gz")).write_bytes(b"not an idx file")
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", (source.as_uri() + "/",))
    target = tmp_path / "home"
    with pytest.raises(datasets.DatasetError, match="Could not download"):
        datasets.load_mnist(str(target))
    assert list((target / "mnist").iterdir()) == []


def test_digits_split():
    (xtr, ytr), (xte, yte) = datasets.load_digits()
    assert xtr.shape[1:] == (8, 8) and len(xtr) + len(xte) == 1797
    assert xtr.max() <= 16 and set(np.unique(ytr)) == set(range(10))


def test_load_adult_from_offline_copy(data_dir):
    from mxprivacy.datasets import load_adult
    train = load_adult(data_dir, download=False)
    test = load_adult(data_dir, split="test", download=False)
    assert train.shape == (30162, 15) and test.shape == (15060, 15)  # complete rows
    assert set(train["income"]) == set(test["income"]) == {"<=50K", ">50K"}
    assert load_adult(data_dir, download=False, dropna=False).shape[0] == 32561


def test_load_adult_missing_without_download(tmp_path):
    from mxprivacy.datasets import load_adult
    from mxprivacy.errors import DatasetError
    with pytest.raises(DatasetError, match="adult.data"):
        load_adult(str(tmp_path), download=False)
