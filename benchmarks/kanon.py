"""k-anonymity on UCI Adult: mxprivacy's Mondrian against anonypy, side by side.

Adult: 30,162 complete rows, with the quasi-identifiers age, education-num,
marital-status, occupation, race, sex, hours-per-week and native-country, and
k in {5, 10, 50}. NCP is computed by the same function for both partitions (this
library's). A last run anonymizes 10^6 synthetic rows at k=10. Prints one JSON object.

    python benchmarks/kanon.py [--data-dir ../shared/data] [--json] [--no-anonypy]
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pandas as pd

from mxprivacy.datasets import load_adult
from mxprivacy.preprocessing import KAnonymizer, check_k_anonymity
from mxprivacy.preprocessing._classes import summarize

QIS = ["age", "education-num", "marital-status", "occupation", "race", "sex",
       "hours-per-week", "native-country"]


def ncp_of_partition(anonymizer: KAnonymizer, frame: pd.DataFrame, parts) -> float:
    """GCP of an arbitrary partition (list of row-index arrays), with our NCP."""
    class_of_row = np.full(len(frame), -1, dtype=np.int64)
    for number, rows in enumerate(parts):
        class_of_row[np.asarray(rows)] = number
    summary = summarize(anonymizer.columns_, frame, class_of_row, len(parts), False)
    sizes = np.bincount(class_of_row[class_of_row >= 0], minlength=len(parts))
    per_class = np.mean([summary[q]["ncp"] for q in QIS], axis=0)
    return float((per_class * sizes).sum() / len(frame))


def run_ours(frame: pd.DataFrame, k: int) -> dict:
    anonymizer = KAnonymizer(QIS, k)
    start = time.perf_counter()
    out = anonymizer.anonymize(frame)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ncp": anonymizer.report_["ncp"],
            "k_achieved": check_k_anonymity(out, QIS), "anonymizer": anonymizer}


def run_anonypy(frame: pd.DataFrame, k: int, reference: KAnonymizer) -> dict:
    from anonypy import anonypy

    data = frame.copy()
    for q in QIS:
        if data[q].dtype == object:
            data[q] = data[q].astype("category")
    start = time.perf_counter()
    preserver = anonypy.Preserver(data, QIS, "income")
    parts = preserver.modrian.partition(k)
    anonypy.anonymize(preserver.modrian.df, parts, QIS, "income")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ncp": ncp_of_partition(reference, frame, parts)}


def synthetic(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(17, 91, rows), "education-num": rng.integers(1, 17, rows),
        "marital-status": rng.choice(list("abcdefg"), rows),
        "occupation": rng.choice([f"o{i}" for i in range(14)], rows),
        "race": rng.choice(list("vwxyz"), rows), "sex": rng.choice(["F", "M"], rows),
        "hours-per-week": rng.integers(1, 100, rows),
        "native-country": rng.choice([f"c{i}" for i in range(41)], rows)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--json", action="store_true", help="JSON only (the default output)")
    parser.add_argument("--no-anonypy", action="store_true")
    parser.add_argument("--synthetic-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    frame = load_adult(args.data_dir)
    try:
        import anonypy  # noqa: F401
        have_anonypy = not args.no_anonypy
    except ImportError:
        have_anonypy = False
    results = {}
    for k in (5, 10, 50):
        ours = run_ours(frame, k)
        row = {"mxprivacy_seconds": ours["seconds"], "mxprivacy_ncp": ours["ncp"],
               "k_achieved": ours["k_achieved"]}
        if have_anonypy:
            theirs = run_anonypy(frame, k, ours["anonymizer"])
            row.update({"anonypy_seconds": theirs["seconds"], "anonypy_ncp": theirs["ncp"],
                        "speedup": theirs["seconds"] / ours["seconds"]})
        results[str(k)] = row
    big = synthetic(args.synthetic_rows)
    start = time.perf_counter()
    anonymizer = KAnonymizer(QIS, 10).fit(big)
    report = {"rows": len(big), "seconds": time.perf_counter() - start,
              "ncp": anonymizer.report_["ncp"],
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps({"adult_rows": len(frame), "k": results, "synthetic_k10": report}))


if __name__ == "__main__":
    main()
