"""Data sets: MNIST from IDX files (a user directory, or downloaded) and sklearn's digits.

The directory is, in order: the ``data_dir`` argument, the ``MXPRIVACY_DATA``
environment variable, ``~/.mxprivacy/data``. MNIST files may sit in ``<dir>/mnist/``
or ``<dir>`` itself, gzip-compressed or not. Content is checked by parsing the IDX
headers (not by file hashes: re-encoded gzip files are fine).
"""
from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ._io import atomic_path, atomic_write
from .errors import DatasetError

__all__ = ["load_mnist", "load_digits", "data_home", "read_idx"]

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

Split = Tuple[np.ndarray, np.ndarray]


def data_home(data_dir: Optional[str] = None) -> Path:
    """The directory data sets are read from (and downloaded to)."""
    chosen = data_dir or os.environ.get("MXPRIVACY_DATA") or os.path.join("~", ".mxprivacy", "data")
    return Path(chosen).expanduser()


def read_idx(path: Path, compressed: Optional[bool] = None) -> np.ndarray:
    """Parse an IDX file into a numpy array; gzip is assumed for names ending in .gz."""
    if compressed is None:
        compressed = str(path).endswith(".gz")
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"Cannot read {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file.")
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: expected {np.prod(shape)} values, got {body.size}.")
    return body.reshape(shape)


def _find(directory: Path, stem: str) -> Optional[Path]:
    for folder in (directory / "mnist", directory):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _download(stem: str, target_dir: Path) -> Path:
    target_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    final = target_dir / (stem + ".gz")
    for mirror in MNIST_MIRRORS:
        url = mirror + stem + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = response.read()
            with atomic_path(str(final)) as tmp:  # checked before it replaces anything
                Path(tmp).write_bytes(data)
                read_idx(Path(tmp), compressed=True)
            return final
        except (OSError, DatasetError) as exc:
            errors.append(f"{url}: {exc}")
    raise DatasetError(f"Could not download {stem}: " + "; ".join(errors))


def load_mnist(data_dir: Optional[str] = None, *, download: bool = True) -> Tuple[Split, Split]:
    """Load MNIST as ``((x_train, y_train), (x_test, y_test))``, uint8 images (N, 28, 28).

    Parameters
    ----------
    data_dir : str, optional
        Where the IDX files are (see the module docstring for the search order).
    download : bool
        Download missing files into ``<data_dir>/mnist`` when online.
    """
    home = data_home(data_dir)
    arrays = {}
    for key, stem in MNIST_FILES.items():
        path = _find(home, stem)
        if path is None:
            if not download:
                raise DatasetError(
                    f"MNIST file {stem}(.gz) not found in {home} or {home / 'mnist'}; pass "
                    "--data-dir / set MXPRIVACY_DATA, or allow download.")
            path = _download(stem, home / "mnist")
        arrays[key] = read_idx(path)
    if len(arrays["train_images"]) != len(arrays["train_labels"]) or \
            len(arrays["test_images"]) != len(arrays["test_labels"]):
        raise DatasetError(f"MNIST images and labels in {home} have different lengths.")
    return ((arrays["train_images"], arrays["train_labels"]),
            (arrays["test_images"], arrays["test_labels"]))


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Tuple[Split, Split]:
    """scikit-learn's bundled 8x8 digits (1797 images, 0..16), split train/test.

    Returns ``((x_train, y_train), (x_test, y_test))`` with images (N, 8, 8) float32.
    """
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    images = bunch.images.astype(np.float32)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(round(len(labels) * (1 - test_fraction)))
    train, test = order[:cut], order[cut:]
    return (images[train], labels[train]), (images[test], labels[test])


ADULT_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/"
ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num",
                 "marital-status", "occupation", "relationship", "race", "sex",
                 "capital-gain", "capital-loss", "hours-per-week", "native-country",
                 "income")


def load_adult(data_dir: Optional[str] = None, *, split: str = "train",
               download: bool = True, dropna: bool = True):
    """UCI Adult as a pandas DataFrame (``split`` "train" = adult.data, "test").

    Looks in ``data_dir`` (or MXPRIVACY_DATA, or ~/.mxprivacy/data), in ``adult/`` or
    directly, and downloads from UCI when missing and ``download`` is true. "?" is read
    as missing; ``dropna`` drops incomplete rows (30,162 complete training rows).
    """
    import pandas as pd

    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}.")
    name = "adult.data" if split == "train" else "adult.test"
    home = data_home(data_dir)
    path = next((p for p in (home / "adult" / name, home / name) if p.is_file()), None)
    if path is None:
        if not download:
            raise DatasetError(f"{name} not found under {home}; pass data_dir= or set "
                               "MXPRIVACY_DATA, or allow download=True.")
        path = _download_adult(name, home / "adult")
    frame = pd.read_csv(path, header=None, names=ADULT_COLUMNS, skipinitialspace=True,
                        na_values="?", comment="|")
    frame["income"] = frame["income"].str.rstrip(".")
    return frame.dropna().reset_index(drop=True) if dropna else frame


def _download_adult(name: str, target_dir: Path) -> Path:
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / name
    try:
        with urllib.request.urlopen(ADULT_URL + name, timeout=30) as response:
            atomic_write(str(final), response.read())
        return final
    except OSError as exc:
        raise DatasetError(f"Could not download {ADULT_URL + name}: {exc}") from exc
