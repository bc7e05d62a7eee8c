"""Privacy models, checkers and metrics on hand-computed tables."""
import math

import numpy as np
import pandas as pd
import pytest

from mxprivacy.errors import InvalidParameterError
from mxprivacy.preprocessing import (check_k_anonymity, check_l_diversity,
                                     check_t_closeness)
from mxprivacy.preprocessing.models import emd, entropy_l, recursive_l, recursive_ok

# Two classes on (zip, age): class A = rows 0-3, class B = rows 4-6.
TABLE = pd.DataFrame({
    "zip": ["130**"] * 4 + ["148**"] * 3,
    "age": ["<30"] * 4 + [">=40"] * 3,
    "disease": ["flu", "flu", "flu", "cancer", "flu", "cold", "hiv"],
    "salary": [3, 3, 4, 5, 6, 8, 11],
})
QIS = ["zip", "age"]


def test_k_anonymity_is_the_smallest_class():
    assert check_k_anonymity(TABLE, QIS) == 3
    assert check_k_anonymity(TABLE.iloc[:4], QIS) == 4
    with_nan = pd.DataFrame({"q": [1.0, np.nan, np.nan]})
    assert check_k_anonymity(with_nan, ["q"]) == 1  # NaN is its own class


def test_distinct_and_entropy_l_diversity():
    assert check_l_diversity(TABLE, QIS, "disease") == 2  # A has {flu, cancer}
    # A: p = (3/4, 1/4): H = -(.75 ln .75 + .25 ln .25) = 0.5623, exp(H) = 1.7548.
    assert check_l_diversity(TABLE, QIS, "disease", "entropy") == pytest.approx(1.7548, abs=1e-4)
    assert entropy_l(np.array([1, 1, 1])) == pytest.approx(3.0)


def test_recursive_diversity_uses_the_most_frequent_value():
    # A sorted: r = (3, 1). (c, 2): r1 < c * r2  <=>  3 < c.
    assert recursive_ok(np.array([1, 3]), c=3.5, l=2)
    assert not recursive_ok(np.array([1, 3]), c=3.0, l=2)
    # B: r = (1, 1, 1); (c, 3): 1 < c * 1. (c, 2): 1 < c * 2.
    assert recursive_l(np.array([1, 1, 1]), c=1.5) == 3
    assert check_l_diversity(TABLE, QIS, "disease", "recursive", c=3.5) == 2
    assert check_l_diversity(TABLE, QIS, "disease", "recursive", c=2.0) == 1
    # r1 must be the most frequent, not the first listed (pyCANON's mistake):
    assert not recursive_ok(np.array([1, 5, 1]), c=2.0, l=2)  # 5 < 2*(1+1) is false


def test_t_closeness_ordered_and_equal_distance():
    # Salary domain (3, 4, 5, 6, 8, 11), whole table q = (2,1,1,1,1,1)/7.
    # Class A: p = (2,1,1,0,0,0)/4. Cumulative p - q: .2143, .3214, .4286, .2857, .1429, 0.
    # Ordered EMD = (.2143 + .3214 + .4286 + .2857 + .1429) / 5 = .27857.
    assert emd(np.array([2, 1, 1, 0, 0, 0]), np.array([2, 1, 1, 1, 1, 1]), True) == \
        pytest.approx(0.278571, abs=1e-6)
    # Class B: p = (0,0,0,1,1,1)/3; |cumulative| = 2/7, 3/7, 4/7, .3810, .1905 -> .371429.
    # The checker reports the largest class distance: B's.
    assert check_t_closeness(TABLE, QIS, "salary") == pytest.approx(0.371429, abs=1e-6)
    # Disease (categorical, equal distance): A = (cancer 1/4, cold 0, flu 3/4, hiv 0),
    # table = (1, 1, 4, 1)/7; EMD = 1/2 * (|.25-.1429| + .1429 + |.75-.5714| + .1429) = .2857.
    assert emd(np.array([1, 0, 3, 0]), np.array([1, 1, 4, 1]), False) == \
        pytest.approx(2 / 7, abs=1e-6)
    # B = (0, 1, 1, 1)/3: 1/2 * (1/7 + 4/21 + 5/21 + 4/21) = 8/21 = .38095, the largest.
    assert check_t_closeness(TABLE, QIS, "disease") == pytest.approx(8 / 21, abs=1e-6)


def test_checker_errors():
    with pytest.raises(InvalidParameterError):
        check_k_anonymity(TABLE, ["nope"])
    with pytest.raises(InvalidParameterError):
        check_l_diversity(TABLE, QIS, "disease", "recursive")
    with pytest.raises(InvalidParameterError):
        check_l_diversity(TABLE, QIS, "disease", "maximal")
    assert math.isclose(check_k_anonymity(TABLE.iloc[:0], QIS), 0)


def test_hierarchical_t_closeness_by_hand():
    # Li et al. (2007) style tree of height 2:
    #   * -> digestive {flu? no: gastric, colitis}, respiratory {flu, bronchitis}.
    tree = {"*": {"digestive": ["gastric", "colitis"], "respiratory": ["flu", "bronchitis"]}}
    frame = pd.DataFrame({"q": ["A"] * 2 + ["B"] * 2,
                          "d": ["gastric", "colitis", "flu", "bronchitis"]})
    # Class A: p = (1/2, 1/2, 0, 0), table q = (1/4, 1/4, 1/4, 1/4): extra = (+.25, +.25, -.25, -.25).
    # Node digestive (height 1): children extras +.25, +.25 -> min(.5, 0) = 0.
    # Root (height 2): digestive +.5, respiratory -.5 -> 2/2 * min(.5, .5) = 0.5.
    assert check_t_closeness(frame, ["q"], "d", hierarchy=tree) == pytest.approx(0.5)
    # Moving mass within a subtree costs only 1/2 per unit: class (gastric, gastric) vs
    # (gastric, colitis) differ inside "digestive".
    mixed = pd.DataFrame({"q": ["A", "A", "B", "B"], "d": ["gastric", "gastric", "colitis",
                                                          "colitis"]})
    # q = (1/2, 1/2, 0, 0); A: extra (+.5, -.5, 0, 0) -> digestive: 1/2 * .5 = .25.
    assert check_t_closeness(mixed, ["q"], "d", hierarchy=tree) == pytest.approx(0.25)
