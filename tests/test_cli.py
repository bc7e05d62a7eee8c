"""The command line: JSON contracts, errors, and no MXNet import for accounting."""
import json
import subprocess
import sys

import pytest

from mxprivacy.accounting import epsilon_for
from mxprivacy.cli import main


def _json_last_line(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_epsilon_json(capsys):
    assert main(["epsilon", "--noise-multiplier", "1.1", "--dataset-size", "60000",
                 "--batch-size", "256", "--epochs", "60", "--delta", "1e-5", "--json"]) == 0
    out = _json_last_line(capsys)
    assert out["steps"] == 14063 and out["sample_rate"] == pytest.approx(256 / 60000)
    assert out["epsilon"] == pytest.approx(epsilon_for(1.1, 256 / 60000, 14063, 1e-5))
    assert set(out) >= {"epsilon", "delta", "accountant", "sample_rate", "noise_multiplier"}


def test_calibrate_json(capsys):
    assert main(["calibrate", "--target-epsilon", "2", "--delta", "1e-5", "--sample-rate",
                 "0.01", "--steps", "1000", "--json"]) == 0
    out = _json_last_line(capsys)
    assert out["achieved_epsilon"] <= 2.0
    assert epsilon_for(out["noise_multiplier"] * 0.99, 0.01, 1000, 1e-5) > 2.0


def test_missing_rate_is_a_clear_error(capsys):
    assert main(["epsilon", "--noise-multiplier", "1", "--delta", "1e-5"]) == 2
    assert "--sample-rate" in capsys.readouterr().err


def test_accounting_commands_do_not_import_mxnet():
    code = ("import sys; from mxprivacy.cli import main; "
            "main(['epsilon','--noise-multiplier','1','--sample-rate','0.01','--steps','10',"
            "'--delta','1e-5']); assert 'mxnet' not in sys.modules, 'mxnet imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_train_digits_json(capsys):
    assert main(["train", "--dataset", "digits", "--epochs", "2", "--batch-size", "64",
                 "--no-progress", "--json"]) == 0
    out = _json_last_line(capsys)
    assert out["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert out["epsilon"] == pytest.approx(
        epsilon_for(1.1, out["sample_rate"], out["steps"], 1e-5))
    assert {"delta", "steps", "noise_multiplier", "sample_rate"} <= set(out)


def test_train_target_epsilon(capsys):
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--target-epsilon", "1.0",
                 "--no-progress", "--json"]) == 0
    out = _json_last_line(capsys)
    assert out["epsilon"] <= 1.0


def test_pld_epsilon_and_calibrate_json(capsys):
    assert main(["epsilon", "--noise-multiplier", "1.1", "--sample-rate", "0.01", "--steps",
                 "1000", "--delta", "1e-5", "--accountant", "pld", "--json"]) == 0
    out = _json_last_line(capsys)
    assert out["accountant"] == "pld"
    assert out["epsilon"] == pytest.approx(epsilon_for(1.1, 0.01, 1000, 1e-5, "pld"))
    assert out["epsilon"] < epsilon_for(1.1, 0.01, 1000, 1e-5, "rdp")
    assert main(["calibrate", "--target-epsilon", "1", "--delta", "1e-5", "--sample-rate",
                 "0.01", "--steps", "1000", "--accountant", "pld", "--json"]) == 0
    out = _json_last_line(capsys)
    assert out["achieved_epsilon"] <= 1.0 and out["accountant"] == "pld"
    assert epsilon_for(out["noise_multiplier"] * 0.99, 0.01, 1000, 1e-5, "pld") > 1.0


def test_infinite_epsilon_is_explained_and_strict_json(capsys):
    assert main(["epsilon", "--noise-multiplier", "0", "--sample-rate", "1", "--steps", "3",
                 "--delta", "1e-5", "--json"]) == 0
    out = capsys.readouterr().out
    assert "infinite" in out.lower()
    assert json.loads(out.strip().splitlines()[-1])["epsilon"] == "inf"


@pytest.mark.parametrize("args", [["--sample-rate", "1.5", "--steps", "10"],
                                  ["--sample-rate", "0.1", "--steps", "0"]])
def test_bad_rates_and_steps_are_clear_errors(capsys, args):
    assert main(["epsilon", "--noise-multiplier", "1", "--delta", "1e-5", *args]) == 2
    err = capsys.readouterr().err
    assert "sample_rate" in err or "--steps" in err
