"""Every command line README.md shows runs as shown (or is skipped for a stated reason).

Commands come from README.md's code blocks (indented and fenced) as it is now, lines starting with `difftrack `,
`python benchmarks/` or `make `. Each `difftrack` one runs in a temporary directory holding the inputs the README
names (made with `difftrack synth`); where a command would take minutes on a CPU, options that make it small are
appended (never replacing the command's own). Skipped: commands that need downloaded weights or data, a GPU, or a
long run (make targets, training, benchmark scripts).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from difftrack.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
STARTS = ("difftrack ", "python benchmarks/", "make ")

# Appended where the command's defaults would take minutes here: (sub-command words) -> options.
SMALLER = {
    ("analyze",): ["--num-steps", "2"],
    ("generate",): ["--steps", "2"],
    ("probe", "compare"): ["--eval-videos", "1", "--train-videos", "2", "--tasks", "tracking", "keypoints"],
}


def readme_commands(text: str) -> list[str]:
    """Command lines of the code blocks of a Markdown text: fenced (```) and indented (4 spaces after a blank
    line or another indented line), lines continued with a backslash joined, trailing comments dropped, `&&`
    chains kept whole."""
    commands, fenced, indented, previous_blank, continued = [], False, False, True, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        indented = not fenced and line.startswith("    ") and (previous_blank or indented)
        previous_blank = not line.strip()
        line = f"{continued} {line.strip()}".strip() if fenced or indented else ""
        continued = line[:-1] if line.endswith("\\") else ""
        if line.startswith(STARTS) and not continued:
            commands.append(" && ".join(shlex.join(words) for words in argvs(line)))
    return commands


def argvs(command: str) -> list[list[str]]:
    """The argument lists of a shell line: words as the shell splits them, comment dropped, split at `&&`."""
    out = [[]]
    for word in shlex.split(command, comments=True):
        if word == "&&":
            out.append([])
        else:
            out[-1].append(word)
    return out


def skip_reason(command: str) -> str | None:
    """Why a README command is not run here, or None."""
    from difftrack.backbones import list_backbones

    words = [word for argv in argvs(command) for word in argv]
    if words[0] == "make":
        return "a make target: installs a virtualenv (.ci/run runs `make test`)"
    if "..." in words:
        return "a shape of a command, not a command"
    if "cuda" in words or "--offload" in words or "gpu" in Path(words[1]).name:
        return "needs a GPU"
    if any(flag in words for flag in ("--tapvid", "--root")):
        return "needs a downloaded TAP-Vid dataset"
    if "--release-dataset" in words:
        return "needs the DiffTrack release's dataset, downloaded"
    present = {e.name: e.weights_present() for e in list_backbones()}
    for flag in ("--model", "--video-model", "--image-model"):
        if flag in words:
            model = words[words.index(flag) + 1]
            if "/" in model and not Path(model).is_dir() or not present.get(model, True):
                return f"needs the weights of {model}, downloaded"
    if "train-tiny" in words:
        return "training: even two steps take about 40 s here (tests/test_train.py covers it)"
    if words[0] == "python":
        return "a benchmark run: minutes of CPU (tests/ run each script's checks on small cases)"
    return None


def smaller(words: list[str]) -> list[str]:
    """``difftrack ...`` words with SMALLER's options for their sub-command appended, unless they set them."""
    for command, options in SMALLER.items():
        if tuple(words[1:1 + len(command)]) == command and options[0] not in words:
            return words + options
    return words


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The inputs the README's commands name: video.mp4 / clip.mp4 and their ground truth, points, prompts."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("video", "clip"):
        assert main(["synth", str(folder / f"{name}.mp4"), "--frames", "8", "--size", "64", "--grid", "4"]) == 0
    with np.load(folder / "clip_gt.npz") as gt:
        np.savez(folder / "gt.npz", **gt)
        queries = gt["queries"]
    (folder / "pts.json").write_text(json.dumps([{"t": float(t), "x": float(x), "y": float(y)}
                                                 for t, x, y in queries[:4]]))
    (folder / "prompts.txt").write_text("a striped disc moves left over a checkered wall\n")
    return folder


COMMANDS = readme_commands(README.read_text())


def test_the_readme_shows_commands_of_every_kind():
    assert {c.split()[0] for c in COMMANDS} >= {"difftrack", "python", "make"}
    assert sum(c.startswith("difftrack ") for c in COMMANDS) >= 8


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command, workdir, tmp_path, monkeypatch, capsys):
    reason = skip_reason(command)
    if reason:
        pytest.skip(reason)
    here = tmp_path / "here"
    shutil.copytree(workdir, here)  # a command may overwrite an input another one reads
    monkeypatch.chdir(here)
    for argv in argvs(command):
        words = smaller(argv)
        code = main(words[1:])
        assert code == 0, f"{' '.join(words)} exited {code}: {capsys.readouterr().err[-2000:]}"
