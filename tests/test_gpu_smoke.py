"""benchmarks/gpu_smoke.py: a clean no-op without CUDA, and its per-family cases run (here on the CPU)."""

import importlib.util
from pathlib import Path

import torch


def test_gpu_smoke_says_so_in_one_line_without_cuda_and_its_family_cases_run_on_the_cpu(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke", path)
    gpu_smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_smoke)
    if not torch.cuda.is_available():
        assert gpu_smoke.main(["--out", str(tmp_path / "g.json")]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and "no CUDA device" in out[0] and not (tmp_path / "g.json").exists()
    cases = gpu_smoke.family_cases("cogvideox-rope", tmp_path, device="cpu", dtype=torch.float32)
    assert {"track", "analyze_add", "analyze_clean", "analyze_invert", "generate_none", "generate_cfg",
            "generate_cag", "generate_cfg_offload", "probe_features"} == set(cases)
    assert all(case["repeatable"] for case in cases.values()), cases
    assert cases["generate_cfg_offload"]["same_as_resident"]
