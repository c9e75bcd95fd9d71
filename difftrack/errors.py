"""User errors: the exception the CLI and the benchmarks turn into one `error: ...` line and exit code 2,
the parser that raises it for usage errors, and the runner that reports it.

Imports nothing but the standard library, so that a program can parse and check its arguments before
torch loads."""

from __future__ import annotations

import argparse
import sys
import traceback


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it, on one line."""


def check_index_range(kind: str, values, upper: int) -> list[int]:
    """Validate 0-based indices against [0, upper) and return them as ints."""
    out = []
    for v in values:
        if not isinstance(v, (int,)) or isinstance(v, bool):
            raise UserError(f"{kind} {v!r} is not an integer; valid {kind}s are 0..{upper - 1}")
        if not 0 <= v < upper:
            raise UserError(f"{kind} {v} is out of range; valid {kind}s are 0..{upper - 1}")
        out.append(int(v))
    return out


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors follow the project's convention: raised as a UserError, so that whoever runs the
    parser under :func:`run_reporting_errors` prints one `error: ` line and exits with 2."""

    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def run_reporting_errors(run, args, debug: bool) -> int:
    """Call ``run(args)`` and turn what it raises into the exit codes of the conventions: 2 for a
    UserError (one `error:` line), 130 on Ctrl-C, 1 for anything else (`internal error:`)."""
    try:
        run(args)
        return 0
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - top-level: report internal errors as such
        if debug:
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
