"""The examples run and learn."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_example_trains_privately():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], check=True,
                         capture_output=True, text=True, timeout=300).stdout
    accuracy, epsilon = map(float, re.search(r"accuracy ([\d.]+) at epsilon ([\d.]+)", out).groups())
    assert accuracy > 0.8 and 0 < epsilon < 10


@pytest.mark.slow
def test_encrypted_inference_example_round_trip(data_dir):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "encrypted_inference.py"),
                          "--epochs", "0.3", "--images", "2", "--json"], check=True,
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, MXPRIVACY_DATA=data_dir)).stdout
    report = json.loads(out)
    assert report["images"] == 2 and report["max_relative_error"] < 1e-3
    assert report["encrypted_predictions"] == report["plaintext_predictions"]
    assert report["bytes"]["public_context"] > report["bytes"]["encrypted_input_per_image"] > 0
    assert report["plaintext_test_accuracy"] > 0.85
