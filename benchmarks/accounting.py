"""Epsilon query latency: mxprivacy's RDP and PLD accountants against dp-accounting 0.6.0.

Every query builds a fresh accountant, composes the Poisson-subsampled Gaussian for
``steps`` steps and asks for epsilon at delta = 1e-5. mxprivacy caches the RDP curve of
an event, so both a cold query (new sigma each time) and a warm one are reported. Prints
one JSON object.

    python benchmarks/accounting.py [--json] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from mxprivacy.accounting import GaussianEvent, PLDAccountant, PoissonSampledEvent, RDPAccountant

SETTINGS = [  # (name, q, sigma, steps)
    ("mnist_60_epochs", 256 / 60000, 1.1, 14063),
    ("1e5_steps", 0.01, 1.0, 100000),
]


def _time(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _ours(kind: str, q: float, sigma: float, steps: int, jitter: bool):
    def query(i: int) -> float:
        s = sigma * (1 + 1e-6 * (i + 1)) if jitter else sigma
        acc = RDPAccountant() if kind == "rdp" else PLDAccountant()
        return acc.compose(PoissonSampledEvent(q, GaussianEvent(s)), steps).get_epsilon(1e-5)
    return query


def _theirs(kind: str, q: float, sigma: float, steps: int):
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    def query(i: int) -> float:
        acc = (rdp_privacy_accountant.RdpAccountant() if kind == "rdp"
               else pld_privacy_accountant.PLDAccountant())
        acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
        return acc.get_epsilon(1e-5)
    return query


def run(repeats: int) -> dict:
    try:
        import dp_accounting  # noqa: F401
        have_theirs = True
    except ImportError:
        have_theirs = False
    results = {}
    for name, q, sigma, steps in SETTINGS:
        row = {"sample_rate": q, "noise_multiplier": sigma, "steps": steps}
        for kind in ("rdp", "pld"):
            row[f"{kind}_epsilon"] = _ours(kind, q, sigma, steps, False)(0)
            row[f"{kind}_cold_ms"] = _time(_ours(kind, q, sigma, steps, True), repeats)
            row[f"{kind}_warm_ms"] = _time(_ours(kind, q, sigma, steps, False), repeats)
            if have_theirs:
                row[f"dp_accounting_{kind}_epsilon"] = _theirs(kind, q, sigma, steps)(0)
                row[f"dp_accounting_{kind}_ms"] = _time(_theirs(kind, q, sigma, steps), repeats)
        results[name] = row
    return {"settings": results, "delta": 1e-5, "dp_accounting": have_theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="JSON only (the default output)")
    args = parser.parse_args()
    print(json.dumps(run(args.repeats), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
