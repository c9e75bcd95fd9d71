"""The `difftrack` command. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

from difftrack.errors import OneLineErrorParser, UserError, run_reporting_errors

# name -> module with `add_arguments(parser)` and `run(args)`; the module docstring's first line is the help.
COMMANDS = {
    "models": "difftrack.commands.models",
    "analyze": "difftrack.commands.analyze",
    "track": "difftrack.commands.track",
    "generate": "difftrack.commands.generate",
    "probe": "difftrack.commands.probe",
    "train-tiny": "difftrack.commands.train_tiny",
    "synth": "difftrack.commands.synth",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="difftrack",
        description="Temporal correspondences inside video diffusion transformers: measure where the 3D attention "
                    "matches points across frames (analyze), track points zero-shot (track), and guide generation "
                    "with it (generate). Runs on the embedded tiny video DiT by default; pass --model for "
                    "CogVideoX, HunyuanVideo or Wan checkpoints.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _parse_and_run(argv: list[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        raise UserError(f"give a command: {', '.join(COMMANDS)} (see `difftrack --help`)")
    args._run(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_reporting_errors(_parse_and_run, argv, debug="--debug" in argv)


if __name__ == "__main__":
    sys.exit(main())
