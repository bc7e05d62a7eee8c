"""Cost of noise per 10^6 samples: fast (numpy floating point) against secure (exact
integer samplers on a CSPRNG). Prints one JSON object.

    python benchmarks/mechanisms.py [--samples 1000000]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mxprivacy.mechanisms import GaussianMechanism, LaplaceMechanism


def _seconds(mechanism, values: np.ndarray) -> float:
    start = time.perf_counter()
    mechanism(values)
    return time.perf_counter() - start


def run(samples: int) -> dict:
    values = np.zeros((samples // 10, 10))
    builders = {
        "laplace": lambda secure: LaplaceMechanism(1.0, 1.0, secure=secure),
        "gaussian": lambda secure: GaussianMechanism(1.0, 1e-5, 1.0, secure=secure),
    }
    result = {}
    for name, build in builders.items():
        fast = _seconds(build(False), values)
        secure = _seconds(build(True), values)
        result[name] = {"fast_ms_per_1e6": 1e3 * fast * 1e6 / values.size,
                        "secure_ms_per_1e6": 1e3 * secure * 1e6 / values.size,
                        "secure_over_fast": secure / fast}
    return {"samples": int(values.size), "mechanisms": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="JSON only (the default output)")
    args = parser.parse_args()
    print(json.dumps(run(args.samples)))


if __name__ == "__main__":
    main()
