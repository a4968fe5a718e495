"""The Flower app bundle (FAB) radfed runs, defined once for both sides.

The FAB holds only ``pyproject.toml`` and two one-line entry points that import the ServerApp
(``coordinator.learn.serverapp``) and the ClientApp (``node.learn.clientapp``) from the radfed
package *installed at each host*.  Every byte is fixed by the radfed version, so its SHA-256 is
reproducible: the coordinator records it with every model (:func:`fab_hash`), and a site computes the
same value from its own install (:func:`installed_fab_hash`) to pin what its SuperNode runs
(:mod:`node.learn.fabpin`; docs/federated-learning.md, "What a site trusts about the app bundle").

The entry points name both packages as *text*: this module imports neither (cdm depends on nothing
of node/ or coordinator/), and each process that loads the FAB imports only its own side.
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
    """SHA-256 of the FAB Flower builds from ``folder`` (what ``flwr run`` submits)."""
    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(Path(folder))).hexdigest()


def installed_fab_hash() -> str:
    """SHA-256 of the FAB this radfed install would submit, built in memory (no files written).

    Equal to :func:`fab_hash` of :func:`write_app`'s folder: Flower's FAB builder fixes every zip
    timestamp, so the hash depends on the file contents alone (tests/test_learn_flower.py checks it
    against the hash of a real run)."""
    from flwr.cli.build import build_fab_from_files

    fab, _ = build_fab_from_files({name: text.encode("utf-8") for name, text in FILES.items()})
    return hashlib.sha256(fab).hexdigest()
