"""The Flower app project ``radfed train`` submits: defined in :mod:`cdm.learn.bundle`, which both the
coordinator (to submit it and record its hash) and the sites (to pin it) read.

The FAB holds only ``pyproject.toml`` and two one-line entry points that import the ServerApp
(:mod:`coordinator.learn.serverapp`) and the ClientApp (:mod:`node.learn.clientapp`) from the radfed
package *installed at each host*; its SHA-256 is a pure function of the radfed version (what a site
must trust about the bundle, and how its SuperNode refuses any other: docs/federated-learning.md).
"""

from __future__ import annotations

from cdm.learn.bundle import APP_NAME, FILES, FLWR_VERSION, PUBLISHER, PYPROJECT, fab_hash, installed_fab_hash, write_app

__all__ = ["APP_NAME", "FILES", "FLWR_VERSION", "PUBLISHER", "PYPROJECT", "fab_hash", "installed_fab_hash", "write_app"]
