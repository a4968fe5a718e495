"""The command line the benchmarks share: each option declared once, as a keyword default.

``parser(__doc__, "federation.json", persons=100_000, skip_nodes=False)`` is an
:class:`argparse.ArgumentParser` described by the first paragraph of the benchmark's docstring, with
``--persons`` (``type=int``, default 100000), the flag ``--skip-nodes`` and ``--out`` (default
``benchmarks/results/federation.json``).  Options of other kinds are added to the parser it returns.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parser(doc: str, results_file: str, **defaults: int | bool) -> argparse.ArgumentParser:
    """The parser: ``--out`` defaults to ``benchmarks/results/<results_file>``; each keyword becomes
    ``--name-with-dashes``, a flag when its default is ``False``, else an option of its default's type."""
    out = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name, default in defaults.items():
        option = "--" + name.replace("_", "-")
        if default is False:
            out.add_argument(option, action="store_true")
        else:
            out.add_argument(option, type=type(default), default=default)
    out.add_argument("--out", default=str(RESULTS / results_file))
    return out
