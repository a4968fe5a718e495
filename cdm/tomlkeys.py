"""The TOML configuration files (node.toml, coordinator.toml), the same for both sides: reading one
(:func:`read_toml`), known-key checking, and the report of ``config check`` (:func:`report_check`).

Both loaders read tables with ``dict.get`` and a default, so a misspelt key would silently take the
default; each side lists the keys it reads (``KNOWN_KEYS``: table -> key -> accepted Python types of the
TOML values, per TOML v1.0.0 as :mod:`tomllib` returns them) and this one function names every table or
key that is not known, and every value of the wrong type.
"""

from __future__ import annotations

import tomllib
from pathlib import Path


def unknown_or_mistyped(raw: dict, known_keys: dict[str, dict[str, tuple[type, ...]]]) -> list[str]:
    """One message per unknown table, non-table, unknown key or wrongly typed value in ``raw``."""
    problems = []
    for table, value in raw.items():
        known = known_keys.get(table)
        if known is None:
            problems.append(f"[{table}]: unknown table (known: {', '.join(sorted(known_keys))})")
            continue
        if not isinstance(value, dict):
            problems.append(f"[{table}] must be a table")
            continue
        for key, item in value.items():
            if key not in known:
                problems.append(f"[{table}] {key}: unknown key (known: {', '.join(sorted(known))})")
            # bool is an int in Python; in TOML true is not a number
            elif isinstance(item, bool) and bool not in known[key] or not isinstance(item, known[key]):
                wanted = " or ".join(t.__name__ for t in known[key])
                problems.append(f"[{table}] {key}: expected {wanted}, got {type(item).__name__} {item!r}")
    return problems


def read_toml(path: Path, what: str, error: type[Exception]) -> dict:
    """The tables of the TOML file ``path``; ``error`` (the side's configuration error, exit 2) naming
    ``what`` ("node config") when the file is missing or not TOML (https://toml.io/en/v1.0.0)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {str(path)!r} is not valid TOML: {exc}") from None


def report_check(path, problems: list[str], ok: str, echo) -> int:
    """Print what ``config check`` says with ``echo(text, err=...)`` (click.echo): one line per
    problem on stderr, each naming the file, then their count; else ``PATH: ok (ok)``.  The exit code:
    1 with problems, else 0."""
    for problem in problems:
        echo(f"{path}: {problem}", err=True)
    if problems:
        echo(f"{len(problems)} problem(s) in {path}", err=True)
        return 1
    echo(f"{path}: ok ({ok})", err=False)
    return 0
