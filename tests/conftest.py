import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir():
    """Directory with the offline MNIST files (MXPRIVACY_DATA or ../shared/data)."""
    path = Path(os.environ.get("MXPRIVACY_DATA", SHARED))
    if not (path / "mnist").is_dir():
        message = f"offline MNIST not found under {path} (set MXPRIVACY_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has ../shared/data beside the clone: never skip there
        pytest.skip(message)
    return str(path)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer tests (real data, notebooks)")
