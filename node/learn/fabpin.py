"""The site pins the Flower app bundle (FAB) its SuperNode may run.

A Flower SuperNode runs whatever FAB the SuperLink sends with a run: Flower's SuperExec starts one
``flwr-clientapp`` process per message, which pulls the message and the FAB, installs the FAB and
imports its ClientApp.  A compromised coordinator could therefore ship a FAB whose ClientApp reads
the CDM directly.  radfed's SuperNode (:mod:`node.learn.supernode`) puts a ``flwr-clientapp`` of its
own first on the SuperExec's ``PATH`` (``<data_dir>/flower/bin``): this module, which runs Flower's
own ``flwr-clientapp`` with one check added between pulling the task and installing the FAB:

* the SHA-256 of the FAB's bytes must be one the site allows: the FAB of the radfed version
  installed *here* (:func:`cdm.learn.bundle.installed_fab_hash`; its entry point runs this site's own
  ``node.learn.clientapp``), or one listed in node.toml ``[learning] allowed_fab_hashes``;
* otherwise the FAB is neither installed nor imported: the reply is a Flower error
  (``FAB_NOT_ALLOWED``) and the refusal is written to the site's audit log like any other round.

A FAB that passes sets ``RADFED_FAB_VERIFIED`` in the process; radfed's ClientApp refuses to read
data without it (:func:`require_verified`), so a SuperNode started some other way (a bare
``flower-supernode``) fails closed instead of running unpinned.  The in-process test grid
(:mod:`cdm.learn.local_grid`) runs no FAB at all and says so in its node config.

The hooks are two module-level functions of ``flwr.supernode.runtime.run_clientapp`` (Flower pinned
at exactly 1.42.0); tests/test_learn_flower.py runs a real SuperNode with a wrong pin.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from pathlib import Path

from cdm.errors import RadfedError

VERIFIED_ENV = "RADFED_FAB_VERIFIED"
REFUSAL = "FAB_NOT_ALLOWED"
SHIM_NAME = "flwr-clientapp"


class FabNotAllowed(RadfedError, RuntimeError):
    """The run's FAB is not one this site allows (the message names its hash)."""

    http_status = 403


def allowed_hashes(config) -> dict[str, str]:
    """``{sha256: why}`` of the FABs this site's SuperNode may run."""
    from cdm.learn.bundle import installed_fab_hash

    allowed = {installed_fab_hash(): "this site's radfed install"}
    for value in (config.section("learning").get("allowed_fab_hashes") or []) if config is not None else []:
        allowed.setdefault(str(value).strip().lower(), "node.toml [learning] allowed_fab_hashes")
    return allowed


def write_shim(folder: Path) -> Path:
    """``folder/flwr-clientapp``: runs this module with the interpreter of this install."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SHIM_NAME
    text = ("#!/bin/sh\n# written by radfed-node (node/learn/fabpin.py): Flower's flwr-clientapp with the site's FAB pin\n"
            f"exec {shlex.quote(sys.executable)} -m node.learn.fabpin \"$@\"\n")
    if not path.exists() or path.read_text() != text:
        path.write_text(text, encoding="utf-8")
    path.chmod(0o700)
    return path


def require_verified(context) -> None:
    """Refuse (``NOT_ALLOWED``) unless this process's FAB passed the pin, or the grid runs no FAB."""
    from node.disclosure.policy import Refusal

    if os.environ.get(VERIFIED_ENV) or context.node_config.get("radfed-grid") == "in-process":
        return
    raise Refusal("NOT_ALLOWED", "this ClientApp process did not pass the site's FAB pin: start the SuperNode with "
                                 "`radfed-node supernode` or `radfed-node serve --flower`")


def _refuse(context, message, digest: str) -> None:
    from node.config import load_config
    from node.learn.data import audit_round

    config = None
    try:
        path = context.node_config.get("radfed-config") if context is not None else None
        config = load_config(str(path), context.node_config.get("radfed-db") or None) if path else None
        cfg = message.content["config"] if message is not None and "config" in message.content else {}
        stage = str(message.metadata.message_type).split(".")[0] if message is not None else "unknown"
        audit_round(config, message.metadata.run_id if message is not None else None, int(cfg.get("server-round", 0)),
                    stage, None, "refused", REFUSAL, 0, {"fab_hash": digest})
    finally:
        raise FabNotAllowed(f"{REFUSAL}: FAB sha256 {digest} is not allowed at "
                            f"{getattr(config, 'site_name', 'this site')} (allowed: its own radfed install's FAB "
                            "and node.toml [learning] allowed_fab_hashes)")


def install_pin() -> None:
    """Wrap ``pull_task_input`` (remember the task) and ``install_from_fab`` (check it first)."""
    from flwr.supernode.runtime import run_clientapp as rc

    pulled: dict = {}
    pull, install = rc.pull_task_input, rc.install_from_fab

    def pull_task_input(client):
        message, context, run, fab = pull(client)
        pulled.update(message=message, context=context)
        return message, context, run, fab

    def install_from_fab(content, *args, **kwargs):
        digest = hashlib.sha256(content).hexdigest()
        context = pulled.get("context")
        from node.config import load_config

        path = context.node_config.get("radfed-config") if context is not None else None
        config = load_config(str(path), context.node_config.get("radfed-db") or None) if path else None
        if digest not in allowed_hashes(config):
            _refuse(context, pulled.get("message"), digest)
        os.environ[VERIFIED_ENV] = digest
        return install(content, *args, **kwargs)

    rc.pull_task_input, rc.install_from_fab = pull_task_input, install_from_fab


def main() -> None:
    install_pin()
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    sys.argv[0] = SHIM_NAME
    flwr_clientapp()


if __name__ == "__main__":
    main()
