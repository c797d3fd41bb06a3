"""Argument types shared by the command-line modules: checked before anything is sent.

Like the command-line modules, it uses the public API only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import foundation_etcd as fe

__all__ = ["id_type"]


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
