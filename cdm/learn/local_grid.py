"""An in-process Flower ``Grid``: a ServerApp's messages handed straight to ClientApps, one per site.

Flower's simulation engine needs Ray, which radfed does not ship; for tests and benchmarks that run
many rounds this grid drives the *same* ServerApp strategies and ClientApp handlers (real
``flwr.app.Message`` objects, real ``ClientApp.__call__`` dispatch) without the SuperLink/SuperNode
transport, whose own cost is measured separately in benchmarks/bench_learn.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    """``sites``: {node_id: (ClientApp, node_config dict)}."""

    _run_ids = itertools.count(1)

    def __init__(self, sites: dict[int, tuple[object, dict]]):
        self._run = Run.create_empty(next(self._run_ids))
        self._apps = {node_id: app for node_id, (app, _) in sites.items()}
        # no FAB is shipped or installed here, so there is none to pin (node/learn/fabpin.py)
        self._contexts = {node_id: Context(run_id=self._run.run_id, node_id=node_id,
                                           node_config={**config, "radfed-grid": "in-process"},
                                           state=RecordDict(), run_config={})
                          for node_id, (_, config) in sites.items()}
        self._replies: dict[str, Message] = {}
        self._become(SUPERLINK_NODE_ID)

    def _become(self, node_id: int) -> None:
        """Flower stamps new messages with the process's task identity; play the right side."""
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = self._run.run_id, node_id, 0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid4().hex
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            node = msg.metadata.dst_node_id
            self._become(node)
            try:
                self._replies[msg.metadata.message_id] = self._apps[node](msg, self._contexts[node])
            finally:
                self._become(SUPERLINK_NODE_ID)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
