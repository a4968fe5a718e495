"""The SQL the compiler writes for the researcher guide's example specs (docs/examples/*.yaml), on a
fresh CDM with the vocabulary radfed seeds, for SQLite and PostgreSQL: what
tests/test_compiled_sql.py compares against tests/fixtures/compiled_examples.json.

``python tests/compiled_sql.py OUT.json`` writes the fixture with whatever ``cdm`` is importable: it
was generated at ff799b4 (before issue 15's restructuring) with ``PYTHONPATH`` on that tree.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from sqlalchemy.dialects import postgresql, sqlite

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect()}


def compiled(spec_text: str, engine) -> dict:
    """{dialect: {"sql": ..., "params": {name: repr(value)}}} of one spec's cohort frame."""
    from cdm.compiler import compile_spec
    from cdm.spec import loads_spec

    frame = compile_spec(loads_spec(spec_text), engine, "test-site")
    out = {}
    for name, dialect in DIALECTS.items():
        done = frame.query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        out[name] = {"sql": str(done), "params": {k: repr(v) for k, v in done.params.items()}}
    return out


def fresh_cdm(folder: Path):
    from cdm.db import create_cdm, open_engine

    engine = open_engine(folder / "cdm.sqlite")
    create_cdm(engine, source_name="test-site")
    return engine


def main(out: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = fresh_cdm(Path(tmp))
        fixture = {}
        for path in sorted(EXAMPLES.glob("*.yaml")):
            text = path.read_text(encoding="utf-8")
            fixture[path.name] = {"spec": text, **compiled(text, engine)}
        engine.dispose()
    Path(out).write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
