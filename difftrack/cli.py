"""The `difftrack` command. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from difftrack.errors import UserError

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


class _Parser(argparse.ArgumentParser):
    """Usage errors follow the project's convention: one `error: ` line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="difftrack",
        description="Temporal correspondences inside video diffusion transformers: measure where the 3D attention "
                    "matches points across frames (analyze), track points zero-shot (track), and guide generation "
                    "with it (generate). Runs on the embedded tiny video DiT by default; pass --model for "
                    "CogVideoX, HunyuanVideo or Wan checkpoints.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # command not built yet
            raise
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        args._run(args)
        return 0
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - top-level: report internal errors as such
        if args.debug:
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
