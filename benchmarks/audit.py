"""Auditing cost: one-run epsilon lower bounds, the membership-inference table, LiRA scoring.

- ``one_run``: a :class:`~mxprivacy.audit.canary.CanaryScoreAuditor` built from 10^5
  canary scores (half in, half out; normal scores, the members shifted by ``--shift``),
  then ``epsilon_one_run``, ``epsilon_one_run_fdp`` and ``epsilon_clopper_pearson`` at
  significance 0.05 and delta 1e-5. Each time includes building the auditor (sorting the
  scores). Goal: each under 1 s.
- ``membership_table``: :func:`~mxprivacy.audit.membership.run_membership_attacks` with
  every attack (threshold, entropy threshold, logistic regression, random forest, k-NN;
  default folds and subsampling) on the default slicing (the entire data set) of 10^5
  examples, half members, half non-members: synthetic logits of a 10-class problem whose
  members' true-class logit is a little higher.
- ``lira``: offline and online LiRA scores (per-example Gaussians) from 16 shadow models'
  confidences on 10^5 examples.

Times are medians of ``--repeats`` runs (the table, the slowest, runs ``--table-repeats``
times). Prints one JSON object.

    python benchmarks/audit.py [--json] [--repeats 5] [--table-repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from mxprivacy.audit.canary import CanaryScoreAuditor
from mxprivacy.audit.lira import lira_offline_scores, lira_online_scores
from mxprivacy.audit.membership import AttackInputData, run_membership_attacks

EXAMPLES = 100_000
NUM_CLASSES = 10
NUM_SHADOW = 16
SIGNIFICANCE, DELTA = 0.05, 1e-5
ONE_RUN_GOAL_SECONDS = 1.0


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _one_run(rng: np.random.Generator, shift: float, repeats: int) -> dict:
    half = EXAMPLES // 2
    in_scores, out_scores = rng.normal(shift, 1.0, half), rng.normal(0.0, 1.0, half)
    bounds = {
        "epsilon_one_run": lambda a: a.epsilon_one_run(SIGNIFICANCE, DELTA),
        "epsilon_one_run_fdp": lambda a: a.epsilon_one_run_fdp(SIGNIFICANCE, DELTA),
        "epsilon_clopper_pearson": lambda a: a.epsilon_clopper_pearson(SIGNIFICANCE, DELTA),
    }
    result = {"canaries": EXAMPLES, "shift": shift}
    for name, bound in bounds.items():
        result[name] = bound(CanaryScoreAuditor(in_scores, out_scores))
        seconds = _median_seconds(lambda: bound(CanaryScoreAuditor(in_scores, out_scores)),
                                  repeats)
        result[f"{name}_seconds"] = seconds
        result[f"{name}_goal_met"] = seconds < ONE_RUN_GOAL_SECONDS
    result["goal_seconds"] = ONE_RUN_GOAL_SECONDS
    result["goal_met"] = all(result[f"{name}_goal_met"] for name in bounds)
    return result


def _synthetic_attack_data(rng: np.random.Generator) -> AttackInputData:
    """Logits of a 10-class problem: members' true-class logit is 0.5 higher on average."""
    half = EXAMPLES // 2

    def side(boost: float):
        labels = rng.integers(0, NUM_CLASSES, half)
        logits = rng.normal(0.0, 1.0, (half, NUM_CLASSES))
        logits[np.arange(half), labels] += 2.0 + boost
        return logits, labels
    (logits_in, labels_in), (logits_out, labels_out) = side(0.5), side(0.0)
    return AttackInputData(logits_train=logits_in, logits_test=logits_out,
                           labels_train=labels_in, labels_test=labels_out)


def _membership_table(rng: np.random.Generator, repeats: int) -> dict:
    data = _synthetic_attack_data(rng)
    results = run_membership_attacks(data, attacks="all", random_state=0)
    seconds = _median_seconds(
        lambda: run_membership_attacks(data, attacks="all", random_state=0), repeats)
    return {"examples": EXAMPLES, "num_classes": NUM_CLASSES,
            "attacks": sorted({r.attack for r in results.results}),
            "auc": {r.attack: round(r.auc, 4) for r in results.results},
            "seconds": seconds, "repeats": repeats}


def _lira(rng: np.random.Generator, repeats: int) -> dict:
    # each example in exactly half of the shadows (a random half per example)
    in_mask = rng.random((NUM_SHADOW, EXAMPLES)).argsort(axis=0) < NUM_SHADOW // 2
    shadow = rng.normal(2.0, 1.0, (NUM_SHADOW, EXAMPLES)) + in_mask
    target = rng.normal(2.5, 1.0, EXAMPLES)
    scorers = {"offline": lambda: lira_offline_scores(target, shadow, in_mask),
               "online": lambda: lira_online_scores(target, shadow, in_mask)}
    return {"num_shadow": NUM_SHADOW, "examples": EXAMPLES,
            **{f"{name}_seconds": _median_seconds(fn, repeats) for name, fn in scorers.items()}}


def run(repeats: int, table_repeats: int, shift: float) -> dict:
    rng = np.random.default_rng(0)
    return {"one_run": _one_run(rng, shift, repeats),
            "membership_table": _membership_table(rng, table_repeats),
            "lira": _lira(rng, repeats),
            "significance": SIGNIFICANCE, "delta": DELTA}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--table-repeats", type=int, default=3)
    parser.add_argument("--shift", type=float, default=1.0,
                        help="mean score of the members (non-members: 0, both sd 1)")
    parser.add_argument("--json", action="store_true", help="JSON only (the default output)")
    args = parser.parse_args()
    print(json.dumps(run(args.repeats, args.table_repeats, args.shift),
                     indent=None if args.json else 2))


if __name__ == "__main__":
    main()
