"""Federated DP-FedAvg on one machine: seconds per round without secure aggregation and
with SecAgg+, accuracy after R rounds, and the user-level epsilon.

Each variant is one ``mxprivacy federated-demo`` run (:func:`mxprivacy.federated.demo.
run_demo`): digits split non-IID by label (2 labels per client) across ``--clients``
clients (default 10) on Flower's simulation engine (flwr 1.12, Ray actors on this
machine: the server and the clients talk through Flower's in-memory driver, not
sockets), the demo's defaults otherwise (q, C, sigma, 2 local epochs). The variants
share the data split and the initial weights:

- ``plain``: DP-FedAvg, the server clips each client's update;
- ``secagg``: DP-FedAvg with SecAgg+ (``secaggplus_mod`` + ``SecAggPlusWorkflow``):
  every client is contacted every round and clips its own update inside the masking;
- ``nonprivate`` (with ``--baseline``): Flower's FedAvg.

``seconds_per_round`` is the mean wall time of rounds 2..R (round 1 includes the start
of the Ray actors); ``total_seconds`` covers the whole run with Ray's start-up. The
machine has 2 cores shared by the server and the client actors. Prints a table, or one
JSON object with ``--json``::

    {"clients", "rounds", "dataset", "variants": {name: {"seconds_per_round",
     "total_seconds", "test_accuracy", "epsilon", "delta", "noise_multiplier",
     "sample_rate", "clip_norm", "rejected", "failures"}}, "secagg_overhead"}
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("seconds_per_round", "total_seconds", "test_accuracy", "epsilon", "delta",
        "noise_multiplier", "sample_rate", "clip_norm", "rejected", "failures")


def run_variant(name: str, args) -> dict:
    from mxprivacy.federated.demo import DemoConfig, run_demo

    cfg = DemoConfig(dataset=args.dataset, clients=args.clients, rounds=args.rounds,
                     secure_aggregation=name == "secagg", dp=name != "nonprivate",
                     partition_seed=0, seed=0, progress=False)
    result = run_demo(cfg).to_dict()
    return {key: result[key] for key in KEYS}


def _json_safe(value):
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    parser.add_argument("--baseline", action="store_true",
                        help="also run the non-private FedAvg baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.clients < 2 or args.rounds < 2:
        parser.error("--clients and --rounds must be at least 2 (round 1 is warm-up)")
    sys.path.insert(0, ROOT)
    names = ["plain", "secagg"] + (["nonprivate"] if args.baseline else [])
    variants = {name: run_variant(name, args) for name in names}
    overhead = variants["secagg"]["seconds_per_round"] / variants["plain"]["seconds_per_round"]
    report = {"clients": args.clients, "rounds": args.rounds, "dataset": args.dataset,
              "variants": variants, "secagg_overhead": overhead}
    if args.json:
        print(json.dumps({k: ({n: {key: _json_safe(v) for key, v in row.items()}
                               for n, row in v.items()} if k == "variants" else v)
                          for k, v in report.items()}))
        return 0
    print(f"{args.clients} clients, {args.rounds} rounds, {args.dataset} (non-IID)")
    print(f"{'variant':>10}  {'s/round':>8}  {'total s':>8}  {'accuracy':>8}  {'epsilon':>9}")
    for name, row in variants.items():
        print(f"{name:>10}  {row['seconds_per_round']:8.3f}  {row['total_seconds']:8.1f}  "
              f"{row['test_accuracy']:8.4f}  {row['epsilon']:9.4g}")
    print(f"SecAgg+ costs {overhead:.2f}x the seconds per round of plain DP-FedAvg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
