"""benchmarks/gpu_smoke.py: a clean no-op without CUDA, and its per-family cases run (here on the CPU)."""

import numpy as np
import torch
from benchmark_scripts import load_benchmark


def test_gpu_smoke_says_so_in_one_line_without_cuda_and_its_family_cases_run_on_the_cpu(tmp_path, capsys):
    gpu_smoke = load_benchmark("gpu_smoke")
    if not torch.cuda.is_available():
        assert gpu_smoke.main(["--out", str(tmp_path / "g.json")]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and "no CUDA device" in out[0] and not (tmp_path / "g.json").exists()
    cases = gpu_smoke.family_cases("cogvideox-rope", tmp_path, device="cpu", dtype=torch.float32)
    assert {"track", "analyze_add", "analyze_clean", "analyze_invert", "generate_none", "generate_cfg",
            "generate_cag", "generate_cfg_offload", "probe_features"} == set(cases)
    assert all(case["repeatable"] for case in cases.values()), cases
    assert cases["generate_cfg_offload"]["same_as_resident"] and cases["generate_cfg_offload"]["max_abs_diff_vs_resident"] == 0


def test_metrics_that_are_nan_in_both_runs_count_as_repeatable(tmp_path):
    """LTX-Video's tiny analysis has metrics with nothing to count (NaN): the same NaN twice is the same result."""
    gpu_smoke = load_benchmark("gpu_smoke")
    assert gpu_smoke._same((np.array([1.0, np.nan]),), (np.array([1.0, np.nan]),))
    assert not gpu_smoke._same((np.array([1.0, np.nan]),), (np.array([2.0, np.nan]),))
    cases = gpu_smoke.family_cases("ltx-video", tmp_path, device="cpu", dtype=torch.float32)
    assert all(case.get("repeatable") for case in cases.values()), cases
