"""Every benchmark script that tracks or samples with a model takes the CLI's --device and --dtype (run as programs).
Not listed: gpu_smoke.py (CUDA and bfloat16 by definition) and real_memory.py (fake tensors, no device)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOADING_MODELS = ["tapvid", "track_ablation", "calibrate_tracker", "embedded_eval", "cag", "track_speed",
                  "gpu_native"]


@pytest.mark.parametrize("script", LOADING_MODELS)
def test_a_model_loading_benchmark_takes_device_and_dtype(script):
    done = subprocess.run([sys.executable, f"benchmarks/{script}.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert "--device" in done.stdout and "--dtype" in done.stdout, script
