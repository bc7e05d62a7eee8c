"""Information-loss metrics and the anonymization report.

- **NCP** (normalized certainty penalty, Xu et al. 2006), per class and quasi-identifier:
  - numeric: (hi - lo) / the column's range;
  - ordered categorical: (distinct values - 1) / (domain size - 1);
  - hierarchical: (leaves under the label's node - 1) / (leaves - 1).

  A class that mixes missing and present values counts 1. The table's NCP (GCP) is
  the mean over rows and quasi-identifiers, and suppressed rows count 1.
- **Discernibility**: the sum of squared class sizes, plus rows_in for each
  suppressed row.
- **C_avg**: (rows kept / number of classes) / k.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

__all__ = ["report"]


def report(anonymizer, rows_in: int, classes: List[np.ndarray], seconds: float) -> Dict:
    sizes = np.array([c.size for c in classes], dtype=np.int64)
    suppressed = int(rows_in - sizes.sum())
    penalties = np.array(anonymizer.class_ncp_)
    ncp_total = float((penalties * sizes).sum() + suppressed)
    return {
        "k_achieved": int(sizes.min()) if sizes.size else 0,
        "rows_in": int(rows_in),
        "rows_out": int(sizes.sum()),
        "suppressed": suppressed,
        "suppression_rate": suppressed / rows_in if rows_in else 0.0,
        "classes": int(sizes.size),
        "ncp": ncp_total / rows_in if rows_in else 0.0,
        "discernibility": int((sizes ** 2).sum() + suppressed * rows_in),
        "c_avg": float(sizes.sum() / sizes.size / anonymizer.k) if sizes.size else 0.0,
        "seconds": seconds,
    }
