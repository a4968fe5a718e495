"""Start-up cost of the command lines (issue 15.7): ``radfed-node --help`` and ``radfed --help`` on two
source trees (e.g. a checkout before a change and one after), with this venv's console scripts.

    python benchmarks/bench_startup.py RUNS BEFORE_TREE AFTER_TREE

Prints per command and tree the CPU time (user + sys; the machine's load disturbs it far less than
wall time) of N interleaved runs, how many modules ``import node.cli`` / ``import coordinator.cli``
loads, and which heavy stacks among them.  Results: benchmarks/README.md."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
HEAVY = {"scipy", "nats", "httpx", "torch", "flwr", "SimpleITK", "radiomics", "matplotlib", "pandas", "pydicom",
         "fastapi", "lifelines", "statsmodels"}
COMMANDS = {"radfed-node": "node.cli", "radfed": "coordinator.cli"}


def cpu_seconds(command: str, tree: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([str(BIN / command), "--help"], env=dict(os.environ, PYTHONPATH=tree), cwd=tempfile.gettempdir(),
                   stdout=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def modules(module: str, tree: str) -> list[str]:
    """Every module ``import module`` loads (``-X importtime``); run outside any tree so that the
    current folder does not shadow ``tree``."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=tree), cwd=tempfile.gettempdir()).stderr
    return [line.split("|")[-1].strip() for line in err.splitlines() if line.startswith("import time:") and "|" in line][1:]


def main(runs: int, trees: dict[str, str]) -> None:
    times = {(t, c): [] for t in trees for c in COMMANDS}
    for _ in range(runs):
        for command in COMMANDS:
            for name, tree in trees.items():
                times[(name, command)].append(cpu_seconds(command, tree))
    for command, module in COMMANDS.items():
        for name, tree in trees.items():
            loaded = modules(module, tree)
            heavy = sorted({m.split(".")[0] for m in loaded} & HEAVY)
            v = times[(name, command)]
            print(f"{command:12s} {name:6s} CPU min {min(v):.3f} s median {statistics.median(v):.3f} s (n={len(v)}); "
                  f"{len(loaded)} modules; heavy: {', '.join(heavy) or '-'}")
    print("load average", tuple(round(x, 1) for x in os.getloadavg()))


if __name__ == "__main__":
    main(int(sys.argv[1]), {"before": sys.argv[2], "after": sys.argv[3]})
