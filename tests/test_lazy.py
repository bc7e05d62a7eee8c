"""Lazy package namespaces (mxprivacy/_lazy.py): every exported name resolves to its
module's object, unknown names raise AttributeError, and importing a package loads none
of the heavy optional libraries."""
import importlib
import subprocess
import sys

import pytest

PACKAGES = {"mxprivacy.audit": ("mxnet", "sklearn"),
            "mxprivacy.federated": ("mxnet", "flwr", "ray"),
            "mxprivacy.encrypted": ("mxnet", "tenseal")}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_exported_name_is_its_modules_object(package):
    pytest.importorskip("flwr")
    pytest.importorskip("tenseal")
    pkg = importlib.import_module(package)
    assert pkg.__all__ == sorted(pkg._LAZY) == dir(pkg)
    for name in pkg.__all__:
        module = importlib.import_module(f"{package}.{pkg._LAZY[name]}")
        assert getattr(pkg, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="no attribute 'missing_name'"):
        pkg.missing_name


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_importing_the_package_loads_no_heavy_library(package):
    heavy = PACKAGES[package]
    code = f"import sys, {package}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
