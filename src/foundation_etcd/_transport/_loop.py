"""The one check that the async API runs on asyncio (``grpc.aio`` runs on nothing else)."""

from __future__ import annotations

import asyncio
import importlib

from .._core.errors import AsyncioRequiredError

__all__ = ["require_asyncio"]


def _running_library() -> str:
    """The async library driving the caller if sniffio (installed with trio) can tell."""
    try:
        sniffio = importlib.import_module("sniffio")
    except ImportError:
        return ""
    try:
        return str(sniffio.current_async_library())
    except sniffio.AsyncLibraryNotFoundError:
        return ""


def require_asyncio(what: str) -> None:
    """Raise :class:`AsyncioRequiredError` unless an asyncio event loop runs the caller.

    Under trio, ``grpc.aio`` would fail later with ``trio.run received unrecognized yield
    message``; this says what is wrong instead, before anything is opened.

    Args:
        what: the call that needs asyncio, for the message.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return
    library = _running_library()
    under = f"under {library}" if library else "outside an asyncio event loop"
    raise AsyncioRequiredError(
        f"{what} needs asyncio: foundation_etcd's async API runs on asyncio only (its "
        f"transport is grpc.aio), and it was called {under}. Use asyncio.run() or "
        "anyio.run(..., backend='asyncio'), or the blocking foundation_etcd.sync API "
        "(from trio: inside trio.to_thread.run_sync)."
    )
