"""DataMinimizer: drops what the model ignores, generalizes what it needs coarsely."""
import numpy as np
import pandas as pd
import pytest

from mxprivacy.errors import InvalidParameterError
from mxprivacy.preprocessing import DataMinimizer


def _data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n),
                          "color": rng.choice(["red", "green", "blue"], n),
                          "city": rng.choice(["a", "b", "c", "d"], n)})
    return frame


def rule(frame):
    """The 'model': positive when signal > 0, or when the color is red."""
    return ((frame["signal"] > 0) | (frame["color"] == "red")).astype(int).to_numpy()


def test_minimizer_drops_ignored_features_and_generalizes_used_ones():
    frame = _data()
    minimizer = DataMinimizer(rule, target_accuracy=0.99).fit(frame)
    decisions = {f: d["action"] for f, d in minimizer.generalizations_.items()}
    assert decisions["noise"] == "drop" and decisions["city"] == "drop"
    assert decisions["signal"] == "generalize"  # two quantile bins around 0 are enough
    assert decisions["color"] == "generalize"  # green and blue act alike: one group
    groups = minimizer.generalizations_["color"]["groups"]
    assert sorted(map(sorted, groups)) == [["blue", "green"], ["red"]]
    assert minimizer.accuracy_ >= 0.99 * minimizer.baseline_accuracy_
    out = minimizer.transform(frame)
    assert out["noise"].nunique() == 1 and out["city"].nunique() == 1
    assert np.mean(rule(out) == rule(frame)) >= 0.99


def test_accuracy_against_labels_and_a_gluon_block():
    mx = pytest.importorskip("mxnet")
    frame = _data()[["signal", "noise"]]
    labels = (frame["signal"] > 0).astype(int).to_numpy()
    net = mx.gluon.nn.Dense(2, in_units=2)
    net.initialize()
    net.weight.set_data(mx.nd.array([[-1.0, 0.0], [1.0, 0.0]]))
    net.bias.set_data(mx.nd.zeros(2))
    minimizer = DataMinimizer(net, target_accuracy=0.98).fit(frame, labels)
    assert minimizer.baseline_accuracy_ == 1.0
    assert minimizer.generalizations_["noise"]["action"] == "drop"
    assert minimizer.generalizations_["signal"]["action"] != "drop"


def test_bad_arguments():
    with pytest.raises(InvalidParameterError):
        DataMinimizer(rule, target_accuracy=1.5).fit(_data())
    with pytest.raises(InvalidParameterError):
        DataMinimizer(rule, features=["zz"]).fit(_data())
    with pytest.raises(InvalidParameterError):
        DataMinimizer(42).fit(_data())
