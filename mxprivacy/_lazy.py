"""Lazy package namespaces: names load their module on first use (PEP 562)."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Tuple


def lazy_names(package: str, names: Dict[str, str]
               ) -> Tuple[List[str], Callable[[str], Any], Callable[[], List[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose public ``names`` map to
    the submodule defining each: importing the package imports none of them."""
    public = sorted(names)

    def getattr_(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> List[str]:
        return public

    return public, getattr_, dir_
