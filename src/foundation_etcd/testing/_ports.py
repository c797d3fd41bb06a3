"""Free TCP ports on the loopback address, where every harness process listens.

:func:`free_ports` returns ports the kernel chose and that differ from one another; they
were free when returned, nothing more (a start that loses a port to another process is
retried by :class:`EtcdServer`).
"""

from __future__ import annotations

import contextlib
import socket

__all__ = ["LOOPBACK", "free_ports"]

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    Each is chosen by the kernel (bind to port 0); all sockets are held until every port
    is chosen, so the ports differ from one another.

    Args:
        count: how many ports.

    Returns:
        The port numbers.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports
