"""The benchmark scripts run as a user runs them (they print figures; their targets are read, not asserted)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_the_gpu_report_says_there_is_no_gpu_and_exits_0():  # CUDA hidden, so a GPU machine answers the same
    result = subprocess.run([sys.executable, "benchmarks/gpu_report.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "No CUDA GPU on this machine" in result.stdout


@pytest.mark.integration
def test_the_speed_benchmark_explains_itself():
    result = subprocess.run([sys.executable, "benchmarks/app_speed.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    assert "Profile (the workflow, model built, counted on the request) / one fvcore count" in result.stdout
