"""Known-key checking for the TOML configuration files (node.toml, coordinator.toml).

Both loaders read tables with ``dict.get`` and a default, so a misspelt key would silently take the
default; each side lists the keys it reads (``KNOWN_KEYS``: table -> key -> accepted Python types of the
TOML values, per TOML v1.0.0 as :mod:`tomllib` returns them) and this one function names every table or
key that is not known, and every value of the wrong type.
"""

from __future__ import annotations


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
