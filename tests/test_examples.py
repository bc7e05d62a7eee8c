"""The examples run and learn."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_example_trains_privately():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], check=True,
                         capture_output=True, text=True, timeout=300).stdout
    accuracy, epsilon = map(float, re.search(r"accuracy ([\d.]+) at epsilon ([\d.]+)", out).groups())
    assert accuracy > 0.8 and 0 < epsilon < 10
