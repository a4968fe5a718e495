"""The Flower app project (what ``flwr run`` packs into a FAB), written from this module.

The FAB holds only ``pyproject.toml`` and two one-line entry points that import the ServerApp
(:mod:`coordinator.learn.serverapp`) and the ClientApp (:mod:`node.learn.clientapp`) from the radfed
package *installed at each host*.  Every byte is fixed by the radfed version, so the FAB hash is
reproducible (:func:`fab_hash`): a site compares it with the run's FAB hash (``flwr ls``) and runs
whatever its own pinned radfed package says, with runtime dependency installation disabled (what a
site must trust about the bundle: docs/federated-learning.md).  The bundle may import node/ and coordinator/ because it
runs in both processes; the packages themselves never import each other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cdm import __version__

FLWR_VERSION = "1.42.0"
PUBLISHER = "radfed"
APP_NAME = "radfed-learn"

PYPROJECT = f'''[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "{__version__}"
description = "radfed federated training: ServerApp and ClientApp entry points (code ships in the radfed package)"
license = "Apache-2.0"
dependencies = ["flwr=={FLWR_VERSION}", "radfed=={__version__}"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "{PUBLISHER}"

[tool.flwr.app.components]
serverapp = "radfed_app.server:app"
clientapp = "radfed_app.client:app"

[tool.flwr.app.config]
work-dir = ""
'''

FILES = {
    "pyproject.toml": PYPROJECT,
    "radfed_app/__init__.py": '"""radfed Flower app entry points; the code is the installed radfed package."""\n',
    # `app = ...` as an assignment: Flower finds the attribute by reading the module's syntax tree
    "radfed_app/server.py": "from coordinator.learn import serverapp\n\napp = serverapp.app\n",
    "radfed_app/client.py": "from node.learn import clientapp\n\napp = clientapp.app\n",
}


def write_app(folder: str | Path) -> Path:
    """Write the app project into ``folder`` (created); returns it."""
    folder = Path(folder)
    for name, text in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


def fab_hash(folder: str | Path) -> str:
    """SHA-256 of the FAB Flower builds from ``folder`` (what ``flwr run`` submits and sites pin)."""
    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(Path(folder))).hexdigest()
