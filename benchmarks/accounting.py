"""Epsilon query latency: mxprivacy's accountants against dp-accounting 0.6.0.

Every query builds a fresh accountant, composes one event for ``steps`` steps and asks
for epsilon at delta = 1e-5. mxprivacy caches the RDP curve of an event, so both a cold
query (new sigma each time) and a warm one are reported for RDP. Events:

- ``poisson_gaussian`` settings: the Poisson-subsampled Gaussian (add/remove), RDP and PLD.
- ``fixed_batch``: a batch of B of n records drawn without replacement (replace-one).
  dp-accounting's RdpAccountant gets ``noise_multiplier / 2`` (it reads the multiplier
  against the replace-one sensitivity 2C). It has no PLD for this event; the PLD time
  reported for it is that of its remove-type pair (sensitivity 2C), a lower bound on the
  event's epsilon, not the same computation.
- ``poisson_laplace``: the Poisson-subsampled Laplace mechanism (dp-accounting: PLD only).
- ``gdp``: GDPAccountant (a CLT approximation; no dp-accounting counterpart).

Prints one JSON object.

    python benchmarks/accounting.py [--json] [--repeats 5]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

from mxprivacy.accounting import (GaussianEvent, GDPAccountant, LaplaceEvent, PLDAccountant,
                                  PoissonSampledEvent, RDPAccountant,
                                  SampledWithoutReplacementEvent)

SETTINGS = [  # (name, q, sigma, steps)
    ("mnist_60_epochs", 256 / 60000, 1.1, 14063),
    ("1e5_steps", 0.01, 1.0, 100000),
]
FIXED = ("mnist_fixed_batch_60_epochs", 60000, 256, 1.1, 14063)  # name, n, B, sigma, steps
LAPLACE = ("laplace_q0.01_b1", 0.01, 1.0, 1000)                  # name, q, scale, steps
DELTA = 1e-5


def _time(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _jittered(value: float, i: int, jitter: bool) -> float:
    return value * (1 + 1e-6 * (i + 1)) if jitter else value


def _ours(kind: str, make_event, steps: int, jitter: bool, **kwargs):
    accountants = {"rdp": RDPAccountant, "pld": PLDAccountant, "gdp": GDPAccountant}

    def query(i: int) -> float:
        acc = accountants[kind](**kwargs)
        return acc.compose(make_event(_jittered(1.0, i, jitter)), steps).get_epsilon(DELTA)
    return query


def _theirs(kind: str, make_event, steps: int, relation: str = "add_remove"):
    from dp_accounting import privacy_accountant
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant
    rel = privacy_accountant.NeighboringRelation
    neighboring = rel.REPLACE_ONE if relation == "replace_one" else rel.ADD_OR_REMOVE_ONE

    def query(i: int) -> float:
        acc = (rdp_privacy_accountant.RdpAccountant(neighboring_relation=neighboring)
               if kind == "rdp" else pld_privacy_accountant.PLDAccountant(neighboring))
        acc.compose(make_event(), steps)
        return acc.get_epsilon(DELTA)
    return query


def _row(ours: dict, theirs: dict, repeats: int, have_theirs: bool) -> dict:
    """``ours``/``theirs``: kind -> (query factory(jitter) or query); epsilons and times."""
    row = {}
    for kind, factory in ours.items():
        row[f"{kind}_epsilon"] = factory(False)(0)
        row[f"{kind}_cold_ms"] = _time(factory(True), repeats)
        row[f"{kind}_warm_ms"] = _time(factory(False), repeats)
    for kind, query in (theirs.items() if have_theirs else ()):
        row[f"dp_accounting_{kind}_epsilon"] = query(0)
        row[f"dp_accounting_{kind}_ms"] = _time(query, repeats)
    return row


def _poisson_rows(repeats: int, have_theirs: bool) -> dict:
    results = {}
    for name, q, sigma, steps in SETTINGS:
        def event(scale, q=q, sigma=sigma):
            return PoissonSampledEvent(q, GaussianEvent(sigma * scale))
        ours = {kind: (lambda jitter, kind=kind: _ours(kind, event, steps, jitter))
                for kind in ("rdp", "pld")}
        theirs = {}
        if have_theirs:
            from dp_accounting import dp_event
            theirs = {kind: _theirs(kind, lambda q=q, sigma=sigma: dp_event.PoissonSampledDpEvent(
                q, dp_event.GaussianDpEvent(sigma)), steps) for kind in ("rdp", "pld")}
        results[name] = {"sample_rate": q, "noise_multiplier": sigma, "steps": steps,
                         **_row(ours, theirs, repeats, have_theirs)}
    return results


def _new_event_rows(repeats: int, have_theirs: bool) -> dict:
    if have_theirs:
        from dp_accounting import dp_event
    results = {}
    name, n, batch, sigma, steps = FIXED

    def fixed(scale):
        return SampledWithoutReplacementEvent(n, batch, GaussianEvent(sigma * scale))
    ours = {kind: (lambda jitter, kind=kind: _ours(kind, fixed, steps, jitter,
                                                   neighboring="replace_one"))
            for kind in ("rdp", "pld", "gdp")}
    theirs = {}
    if have_theirs:
        theirs = {
            "rdp": _theirs("rdp", lambda: dp_event.SampledWithoutReplacementDpEvent(
                n, batch, dp_event.GaussianDpEvent(sigma / 2)), steps, "replace_one"),
            "pld_remove_pair": _theirs("pld", lambda: dp_event.PoissonSampledDpEvent(
                batch / n, dp_event.GaussianDpEvent(sigma / 2)), steps)}
    results[name] = {"dataset_size": n, "batch_size": batch, "noise_multiplier": sigma,
                     "steps": steps, **_row(ours, theirs, repeats, have_theirs)}

    name, q, scale, steps = LAPLACE

    def laplace(factor):
        return PoissonSampledEvent(q, LaplaceEvent(scale * factor))
    ours = {kind: (lambda jitter, kind=kind: _ours(kind, laplace, steps, jitter))
            for kind in ("rdp", "pld")}
    theirs = {}
    if have_theirs:
        theirs = {"pld": _theirs("pld", lambda: dp_event.PoissonSampledDpEvent(
            q, dp_event.LaplaceDpEvent(scale)), steps)}
    results[name] = {"sample_rate": q, "laplace_scale": scale, "steps": steps,
                     **_row(ours, theirs, repeats, have_theirs)}

    name, q, sigma, steps = SETTINGS[0]

    def poisson(factor):
        return PoissonSampledEvent(q, GaussianEvent(sigma * factor))
    results[f"gdp_{name}"] = {"sample_rate": q, "noise_multiplier": sigma, "steps": steps,
                              **_row({"gdp": lambda jitter: _ours("gdp", poisson, steps, jitter)},
                                     {}, repeats, False)}
    return results


def run(repeats: int) -> dict:
    have_theirs = importlib.util.find_spec("dp_accounting") is not None
    return {"settings": _poisson_rows(repeats, have_theirs),
            "new_events": _new_event_rows(repeats, have_theirs),
            "delta": DELTA, "dp_accounting": have_theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="JSON only (the default output)")
    args = parser.parse_args()
    print(json.dumps(run(args.repeats), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
