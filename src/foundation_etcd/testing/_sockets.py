"""Closing the fault proxy's connections the hard way, and those nothing closed at all.

:func:`reset` ends a connection with an RST instead of a FIN, as a crashed host or a
firewall would. :func:`close_orphaned_sockets` closes, once a proxy's event loop has
stopped, the sockets of that loop's transports that no handler ever closed, so none is
left to the garbage collector (and its ``ResourceWarning``) in some later test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct

__all__ = ["close_orphaned_sockets", "reset"]

_LINGER_RESET = struct.pack("ii", 1, 0)


def reset(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection with RST rather than FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


def close_orphaned_sockets(loop: asyncio.AbstractEventLoop) -> None:
    """Close the sockets of transports of ``loop`` that nothing closed before it stopped.

    A connection accepted in the last moments of a shutdown can have its transport made
    while its handler task never runs; without this its socket would be closed (with a
    ResourceWarning) by the garbage collector, in whatever test is running by then.
    """
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.Transport) and getattr(obj, "_loop", None) is loop:
            sock = getattr(obj, "_sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
                obj._sock = None  # type: ignore[attr-defined]
