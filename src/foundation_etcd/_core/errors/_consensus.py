"""Errors of the consensus primitives: shared state, transactions, counters, barriers."""

from __future__ import annotations

from collections.abc import Sequence

from ._base import FoundationEtcdError

__all__ = ["BarrierError", "ConflictError", "TransactionConflictError"]


class ConflictError(FoundationEtcdError):
    """Base of the errors raised when optimistic writes kept losing to other writers."""


class TransactionConflictError(ConflictError):
    """``transact`` (or ``SharedState.update``) used its whole retry budget: nothing written.

    Every attempt found a key it read changed by another writer before it could commit.
    Attributes: ``attempts`` (the attempts made), ``keys`` (the keys whose compares failed
    in the last attempt, as far as etcd's answer tells; empty when it cannot tell).
    """

    def __init__(self, what: str, attempts: int, keys: Sequence[bytes] = ()) -> None:
        shown = ", ".join(k.decode(errors="replace") for k in list(keys)[:5])
        more = f" (last conflict on {shown})" if shown else ""
        super().__init__(f"{what}: conflicted in all {attempts} attempts{more}; nothing written")
        self.attempts = attempts
        self.keys = tuple(keys)


class BarrierError(FoundationEtcdError):
    """A barrier was used against its protocol (for example ``leave`` before ``enter``)."""
