"""Socket set-up shared by every association the node opens or accepts.

DIMSE messages are small P-DATA-TF PDUs (PS3.8 Section 9.3.5) exchanged in request/response
lock-step; with Nagle's algorithm on, the second small write of a message waits for the peer's
delayed ACK, about 40 ms per message on Linux.  TCP_NODELAY turns Nagle off.  pynetdicom 3 has no
socket-option setting, but it fires ``EVT_CONN_OPEN`` synchronously once the TCP connection exists
and before the A-ASSOCIATE exchange, on the requestor and the acceptor side alike, so a handler on
that event configures every association socket.
"""

from __future__ import annotations

import socket

from pynetdicom import evt


def set_nodelay(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler: disable Nagle on the association's socket."""
    wrapped = event.assoc.dul.socket
    sock = wrapped.socket if wrapped is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, set_nodelay)]


def nodelay_is_set(assoc) -> bool:
    """Whether TCP_NODELAY is on for ``assoc``'s socket (for tests and diagnostics)."""
    sock = assoc.dul.socket.socket
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
