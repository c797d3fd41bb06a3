"""What the command-line modules share: argument types, the node id, the errors they print.

Argument types check a value before anything is sent; ``client_id`` is the node id an
observer connects as; ``fail`` and ``usage_error`` print the one-line runtime error (exit 1)
and the usage error (exit 2).

Like the command-line modules, it uses the public API only.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable

import foundation_etcd as fe

__all__ = ["PROG", "client_id", "fail", "id_type", "usage_error"]

PROG = "foundation-etcd"


def id_type(kind: str) -> Callable[[str], str]:
    """An argparse type that accepts a valid id (``validate_id``) of ``kind``.

    A bad value is a usage error (exit code 2) naming what is wrong with it.
    """

    def check(value: str) -> str:
        try:
            return fe.validate_id(value, kind)
        except fe.InvalidIdError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    check.__name__ = kind  # argparse names the type in its message
    return check


def client_id() -> str:
    """The node id a command-line process connects as (it never hosts agents)."""
    return f"cli-{socket.gethostname()}-{os.getpid()}"


def fail(message: object) -> int:
    """Print ``foundation-etcd: <message>`` on one line of stderr; return exit status 1."""
    print(f"{PROG}: {' '.join(str(message).splitlines())}", file=sys.stderr)
    return 1


def usage_error(args: argparse.Namespace, message: str) -> int:
    """A usage error found after parsing (as ``argparse`` prints one): exit status 2."""
    parser: argparse.ArgumentParser = args.parser
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2
