"""Split a data set among simulated clients: IID, label shards, or Dirichlet label skew.

Each function returns a list of ``num_clients`` sorted index arrays (int64) that are
disjoint, cover every index, and are all non-empty (or it raises
:class:`~mxprivacy.errors.InvalidParameterError` saying what to change).

- :func:`partition_iid`: a random permutation cut into near-equal parts.
- :func:`partition_by_label`: non-IID "pathological" split (McMahan et al. 2017): each
  client holds examples of at most ``classes_per_client`` labels. The labels are dealt
  to the clients' slots round-robin over a shuffled label order (every label goes to
  at least one client, and the label counts differ by at most one), then each label's
  examples are split evenly among the clients that hold it.
- :func:`dirichlet_partition`: for each label, the clients' shares are drawn from
  Dirichlet(alpha) (Hsu et al. 2019); small alpha gives strong skew.

``seed`` makes a split reproducible. Partitioning is a simulation device, not a privacy
mechanism, so a public seed is fine here.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["partition_iid", "partition_by_label", "dirichlet_partition"]

_DIRICHLET_TRIES = 100


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _labels(y, num_clients: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise InvalidParameterError(
            f"y must be a 1-D array of labels, got shape {y.shape}: pass class indices, "
            "not one-hot rows.")
    if len(y) < num_clients:
        raise InvalidParameterError(
            f"{len(y)} examples cannot give each of {num_clients} clients one: use fewer "
            "clients or more data.")
    return y


def _sorted(parts) -> List[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def partition_iid(n: int, num_clients: int, *, seed: Optional[int] = None
                  ) -> List[np.ndarray]:
    """Indices 0..n-1 shuffled and cut into ``num_clients`` near-equal parts."""
    n, num_clients = _count("n", n), _count("num_clients", num_clients)
    if n < num_clients:
        raise InvalidParameterError(
            f"{n} examples cannot give each of {num_clients} clients one: use fewer "
            "clients or more data.")
    order = np.random.default_rng(seed).permutation(n)
    return _sorted(np.array_split(order, num_clients))


def partition_by_label(y, num_clients: int, *, classes_per_client: int = 2,
                       seed: Optional[int] = None) -> List[np.ndarray]:
    """Each client gets examples of at most ``classes_per_client`` labels (see module)."""
    num_clients = _count("num_clients", num_clients)
    per_client = _count("classes_per_client", classes_per_client)
    y = _labels(y, num_clients)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(y))
    per_client = min(per_client, len(classes))
    if num_clients * per_client < len(classes):
        raise InvalidParameterError(
            f"{num_clients} clients x {per_client} classes each cannot hold all "
            f"{len(classes)} labels: raise classes_per_client to at least "
            f"{math.ceil(len(classes) / num_clients)} or use more clients.")
    slots = [classes[j % len(classes)] for j in range(num_clients * per_client)]
    holders = {label: [] for label in classes}
    for j, label in enumerate(slots):
        holders[label].append(j // per_client)
    parts: List[list] = [[] for _ in range(num_clients)]
    for label, clients in holders.items():
        members = rng.permutation(np.flatnonzero(y == label))
        if len(members) < len(clients):
            raise InvalidParameterError(
                f"Label {label!r} has {len(members)} examples but {len(clients)} clients "
                "hold it: use fewer clients or a larger classes_per_client.")
        for client, chunk in zip(clients, np.array_split(members, len(clients))):
            parts[client].extend(chunk.tolist())
    return _sorted(parts)


def dirichlet_partition(y, num_clients: int, alpha: float, seed: Optional[int] = None
                        ) -> List[np.ndarray]:
    """Per label, split its examples among clients in Dirichlet(``alpha``) proportions.

    Draws are repeated (up to 100 times) until every client has an example.
    """
    num_clients = _count("num_clients", num_clients)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
            or not math.isfinite(alpha) or alpha <= 0:
        raise InvalidParameterError(f"alpha must be a positive number, got {alpha!r}.")
    y = _labels(y, num_clients)
    rng = np.random.default_rng(seed)
    for _ in range(_DIRICHLET_TRIES):
        parts: List[list] = [[] for _ in range(num_clients)]
        for label in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients))[:-1]
                    * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].extend(chunk.tolist())
        if all(parts):
            return _sorted(parts)
    raise InvalidParameterError(
        f"Dirichlet(alpha={alpha}) left a client without examples in "
        f"{_DIRICHLET_TRIES} draws: raise alpha, or use fewer clients or more data.")
