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


def test_anonymize_csv(tmp_path, capsys):
    import pandas as pd
    from mxprivacy.preprocessing import check_k_anonymity, check_l_diversity
    src = tmp_path / "in.csv"
    rows = [(20 + i % 30, ["a", "b", "c"][i % 3], i, ["x", "y"][i % 2]) for i in range(60)]
    rows.append((99, "?", 1000, "x"))
    pd.DataFrame(rows, columns=["age", "job", "id", "s"]).to_csv(src, index=False)
    out, report = tmp_path / "out.csv", tmp_path / "report.json"
    assert main(["anonymize", str(src), "-o", str(out), "--quasi-identifiers", "age,job",
                 "--k", "5", "--sensitive", "s", "--l-diversity", "2", "--na-values", "?",
                 "--report", str(report), "--json"]) == 0
    printed = _json_last_line(capsys)
    written = json.loads(report.read_text())
    assert {"k_achieved", "rows_in", "rows_out", "suppressed", "ncp", "discernibility",
            "c_avg", "seconds"} <= set(written)
    assert printed["rows_in"] == 61 and written["rows_out"] + written["suppressed"] == 61
    result = pd.read_csv(out)
    assert result["id"].tolist() == sorted(result["id"].tolist())  # input order kept
    assert check_k_anonymity(result, ["age", "job"]) >= 5
    assert check_l_diversity(result, ["age", "job"], "s") >= 2


def test_anonymize_does_not_import_mxnet(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("a,b\n" + "\n".join(f"{i},{i % 3}" for i in range(20)))
    code = ("import sys; from mxprivacy.cli import main; "
            f"main(['anonymize', {str(src)!r}, '-o', {str(tmp_path / 'o.csv')!r}, "
            "'--quasi-identifiers', 'a,b', '--k', '4']); "
            "assert 'mxnet' not in sys.modules, 'mxnet imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_anonymize_unreachable_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text("a\n1\n2\n")
    assert main(["anonymize", str(src), "-o", str(tmp_path / "o.csv"),
                 "--quasi-identifiers", "a", "--k", "5"]) == 2
    assert "k=5" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
