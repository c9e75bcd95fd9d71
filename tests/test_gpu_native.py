"""benchmarks/gpu_native.py run as a program at tiny sizes on the CPU (what the GPU run will do, so that
its lease is not spent debugging), and a bad option."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ["track_short", "track_long", "track_paper_short", "track_paper_long", "analyze", "generate_cfg", "generate_cag"]
STAGES = {"track": {"vae_encode", "transformer"}, "analyze --video": {"vae_encode", "transformer"},
          "generate": {"text_encoder", "transformer", "vae_decode"}}


def _run(*args):
    return subprocess.run([sys.executable, "benchmarks/gpu_native.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def _check_case(name, case):
    assert "error" not in case, (name, case)
    assert len(case["wall_s"]) == len(case["cpu_s"]) == 2 and min(case["wall_s"] + case["cpu_s"]) > 0, (name, case)
    assert STAGES[case["command"]] <= set(case["stages_s"]) and min(case["stages_s"].values()) > 0, (name, case)
    assert case["same_bits"] is True, name
    assert case["max_memory_allocated_gib"] is None  # no CUDA allocator to ask
    assert case["offload"] == name.endswith("_offload")
    if case["offload"]:  # on the CPU the offload hooks move nothing: every output the same
        assert case["max_abs_diff_vs_resident"] and set(case["max_abs_diff_vs_resident"].values()) == {0.0}, name


def test_a_tiny_cpu_run_records_every_case_with_real_values(tmp_path):
    out = tmp_path / "native.json"
    done = _run("--device", "cpu", "--dtype", "float32", "--tiny", "--families", "ltx-video", "cogvideox-5b-i2v",
                "--smoke", "ltx-video", "--budget-s", "100000", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (result["device_type"], result["dtype"], result["tiny"], result["timer"]) == ("cpu", "float32", True,
                                                                                      "time.perf_counter")
    assert list(result["families"]) == ["cogvideox-5b-i2v", "ltx-video"]  # the script's order, not the command's

    i2v, ltx = result["families"]["cogvideox-5b-i2v"], result["families"]["ltx-video"]
    assert list(i2v["cases"]) == CASES + [c + "_offload" for c in CASES] and i2v["skipped"] == {}
    assert list(ltx["cases"]) == [c for c in CASES if c != "generate_cag"] + [
        c + "_offload" for c in CASES if c != "generate_cag"]
    assert set(ltx["skipped"]) == {"generate_cag", "generate_cag_offload"}
    assert all(reason.startswith("CAG refused: ") for reason in ltx["skipped"].values())
    for family in (i2v, ltx):
        assert family["size"] == {"frames": 9, "height": 32, "width": 32} and family["setup"]["wall_s"] > 0
        for name, case in family["cases"].items():
            _check_case(name, case)
    assert i2v["cases"]["track_long"]["windows"] > i2v["cases"]["track_short"]["windows"] >= 1
    assert i2v["cases"]["track_long"]["frames"] == 9 and i2v["cases"]["analyze"]["layers"] == 2
    paper = i2v["cases"]["track_paper_long"]
    assert paper["tracker"] == "paper" and paper["forwards"] > i2v["cases"]["track_paper_short"]["forwards"] >= 1

    # Next to each case, real_memory.json's prediction for the same command (the I2V model has the 5B's).
    predicted = {name: case["predicted_gib"] for name, case in i2v["cases"].items()}
    assert predicted["track_short"]["real_memory"] == predicted["analyze"]["real_memory"] == "track / analyze --video"
    assert predicted["generate_cag"]["real_memory"] == "generate"
    assert predicted["generate_cfg_offload"]["real_memory"] == "generate --offload"
    assert predicted["track_long_offload"]["real_memory"].startswith("max of the vae_encode and transformer_track")
    assert {p["model"] for p in predicted.values()} == {"cogvideox-5b"}
    assert predicted["generate_cfg"]["gib"] > predicted["generate_cfg_offload"]["gib"] > 0
    assert ltx["cases"]["analyze"]["predicted_gib"]["size"] == {"frames": 161, "height": 512, "width": 704}

    smoke = result["gpu_smoke_failures"]
    assert list(smoke) == ["ltx-video"]
    assert list(smoke["ltx-video"]["cases"]) == ["analyze_add", "analyze_clean", "analyze_invert", "generate_cfg",
                                                 "generate_cfg_offload"]
    for name, case in smoke["ltx-video"]["cases"].items():
        _check_case(name, case)

    kernel = result["kernel"]
    for model in ("cogvideox-2b", "cogvideox-5b"):
        row = kernel[model]
        assert row["triton"].startswith("skipped: ")
        assert all(len(row[name]["times_s"]) == 5 and row[name]["median_s"] > 0 for name in ("torch", "bare_matmul"))
        assert row["shape"]["points"] == row["shape"]["grid"][0] * row["shape"]["grid"][1]


def test_a_spent_budget_skips_the_cases_left_and_says_why(tmp_path):
    out = tmp_path / "native.json"
    done = _run("--device", "cpu", "--tiny", "--families", "cogvideox-2b", "--budget-s", "0.001", "--smoke",
                "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    family = result["families"]["cogvideox-2b"]
    assert family["cases"] == {} and family["setup"]["wall_s"] > 0.001
    assert list(family["skipped"]) == CASES + [c + "_offload" for c in CASES]
    assert all(reason.startswith("budget: ") and reason.endswith(" of 0.001 s spent")
               for reason in family["skipped"].values())
    assert result["gpu_smoke_failures"] == {} and result["kernel"]["cogvideox-2b"]["torch"]["median_s"] > 0


def test_a_bad_option_is_one_error_line_and_no_file(tmp_path):
    out = tmp_path / "native.json"
    done = _run("--tiny", "--families", "cogvideox-9b", "--out", str(out))
    assert done.returncode == 2 and not out.exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cogvideox-9b" in lines[0], done.stderr
