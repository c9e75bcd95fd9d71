"""The one exception type that the CLI turns into `error: ...` and exit code 2."""


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
