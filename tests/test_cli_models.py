"""`difftrack models`: every registry entry with its source and weights status; CLI error conventions."""

import json

from difftrack import list_backbones
from difftrack.cli import main


def test_models_lists_every_entry_with_source_and_weights(capsys):
    assert main(["models"]) == 0
    out, err = capsys.readouterr()
    header, *lines = out.strip().splitlines()
    entries = list_backbones()
    assert header.split()[:3] == ["name", "source", "weights"] and "tracking layers" in header
    assert len(lines) == len(entries) and err == ""
    for entry, line in zip(entries, lines):
        status = "present" if entry.weights_present() else "absent"
        assert line.split()[:3] == [entry.name, entry.source, status]
    names = [e.name for e in entries]
    for name in ("cogvideox-2b", "cogvideox-5b", "cogvideox-5b-i2v", "hunyuanvideo", "wan2.1-t2v-1.3b"):
        assert name in names


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["hunyuanvideo"]["source"] == "hunyuanvideo-community/HunyuanVideo"
    assert by_name["wan2.1-t2v-1.3b"]["source"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert all(r["weights"] in ("present", "absent") for r in rows)
    assert [r["name"] for r in rows] == [e.name for e in list_backbones()]


def test_models_bad_option_exits_2_with_error_line(capsys):
    try:
        code = main(["models", "--no-such-option"])
    except SystemExit as exc:  # argparse reports usage errors by exiting
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unrecognized arguments: --no-such-option")


def test_models_shows_the_methods_defaults_from_a_cached_config(tmp_path):
    """A hub checkpoint whose config is in the local cache shows the method's defaults for its architecture
    (CogVideoX-2B: 30 layers x 30 heads -> block 17 at step 49 of 50, CAG 13 17 21), without its weights."""
    import os
    import subprocess
    import sys

    repo = tmp_path / "hub" / "models--THUDM--CogVideoX-2b"
    commit = "0" * 40
    config = repo / "snapshots" / commit / "transformer" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"_class_name": "CogVideoXTransformer3DModel", "num_layers": 30,
                                  "num_attention_heads": 30, "attention_head_dim": 64}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "difftrack.cli", "models", "--json"], env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-1000:]
    rows = {r["name"]: r for r in json.loads(run.stdout)}
    assert rows["cogvideox-2b"]["defaults"] == {"track_layers": [17], "track_step": [49, 50], "cag_layers": [13, 17, 21],
                                                "tracker": "paper", "paper_size": None, "paper_chunk": None}
    assert rows["tiny-image"]["defaults"]["cag_layers"] is None and rows["tiny-video"]["defaults"]["tracker"] == "difftrack"
    # without its config, a checkpoint's defaults come from the architecture the registry records for it
    assert rows["cogvideox-5b"]["defaults"]["cag_layers"] == [15, 17, 18]
    assert rows["hunyuanvideo"]["defaults"]["track_layers"] == [16] and rows["hunyuanvideo"]["defaults"]["paper_size"] == [480, 720]
    assert all(row["defaults"] is not None for row in rows.values())
