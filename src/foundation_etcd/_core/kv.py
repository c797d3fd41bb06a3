"""Plain values for etcd's key-value API: keys, compares, operations and results.

These are pure data with no I/O; the transport turns them into protobuf messages. Keys and
values are ``bytes``; every builder also accepts ``str`` (encoded as UTF-8).

Compares read like the etcd API::

    Compare.create_revision(key) == 0          # key absent
    Compare.mod_revision(key) == kv.mod_revision
    Compare.value(key) != b"x"
    Compare.create_revision(prefix, range_end=end) < 100   # every key in the range

and operations are built with :class:`Op`::

    Op.put(key, value, lease=lease_id), Op.get(prefix, prefix=True), Op.delete(key)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .keys import prefix_end

__all__ = [
    "Compare",
    "DeleteResult",
    "EventType",
    "KeyValue",
    "Op",
    "PutResult",
    "RangeResult",
    "TxnResult",
    "WatchEvent",
    "to_bytes",
]

Bytes = bytes | str
CompareOp = Literal["==", "!=", "<", ">"]
CompareTarget = Literal["version", "create", "mod", "value", "lease"]


def to_bytes(data: Bytes) -> bytes:
    """Return ``data`` as bytes, encoding a ``str`` as UTF-8."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    raise TypeError(f"expected bytes or str, not {type(data).__name__}")


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it.

    Attributes:
        key: the key.
        value: the value.
        create_revision: revision of the key's creation (stable while the key lives).
        mod_revision: revision of the last change.
        version: number of changes since creation (1 after creation).
        lease: id of the lease the key is attached to, 0 for none.
    """

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class _CompareBuilder:
    """Half of a compare: a target on a key, waiting for its operator."""

    __slots__ = ("_key", "_range_end", "_target")

    def __init__(self, target: CompareTarget, key: Bytes, range_end: Bytes | None) -> None:
        self._target: CompareTarget = target
        self._key = to_bytes(key)
        self._range_end = None if range_end is None else to_bytes(range_end)

    def _make(self, op: CompareOp, other: object) -> Compare:
        if self._target == "value":
            if not isinstance(other, bytes | str):
                raise TypeError("a value compare needs bytes or str")
            value: int | bytes = to_bytes(other)
        else:
            if isinstance(other, bool) or not isinstance(other, int):
                raise TypeError(f"a {self._target} compare needs an int")
            value = other
        return Compare(self._key, self._target, op, value, self._range_end)

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._make("==", other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._make("!=", other)

    def __lt__(self, other: object) -> Compare:
        return self._make("<", other)

    def __gt__(self, other: object) -> Compare:
        return self._make(">", other)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction.

    Build with the class methods and a comparison operator, e.g.
    ``Compare.create_revision(key) == 0``. With ``range_end``, the condition must hold for
    every key in ``[key, range_end)``.
    """

    key: bytes
    target: CompareTarget
    op: CompareOp
    operand: int | bytes
    range_end: bytes | None = None

    @staticmethod
    def version(key: Bytes, *, range_end: Bytes | None = None) -> _CompareBuilder:
        """Compare the key's version (0 when absent)."""
        return _CompareBuilder("version", key, range_end)

    @staticmethod
    def create_revision(key: Bytes, *, range_end: Bytes | None = None) -> _CompareBuilder:
        """Compare the key's create revision (0 when absent)."""
        return _CompareBuilder("create", key, range_end)

    @staticmethod
    def mod_revision(key: Bytes, *, range_end: Bytes | None = None) -> _CompareBuilder:
        """Compare the key's mod revision (0 when absent)."""
        return _CompareBuilder("mod", key, range_end)

    @staticmethod
    def value(key: Bytes, *, range_end: Bytes | None = None) -> _CompareBuilder:
        """Compare the key's value."""
        return _CompareBuilder("value", key, range_end)

    @staticmethod
    def lease(key: Bytes, *, range_end: Bytes | None = None) -> _CompareBuilder:
        """Compare the key's lease id (0 when none)."""
        return _CompareBuilder("lease", key, range_end)


@dataclass(frozen=True, slots=True)
class RangeOp:
    """Read a key or a range (see :meth:`Op.get`)."""

    key: bytes
    range_end: bytes | None = None
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False
    serializable: bool = False
    revision: int = 0
    sort_by_create: bool = False
    descending: bool = False
    max_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class PutOp:
    """Write a key (see :meth:`Op.put`)."""

    key: bytes
    value: bytes
    lease: int = 0
    prev_kv: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class DeleteOp:
    """Delete a key or a range (see :meth:`Op.delete`)."""

    key: bytes
    range_end: bytes | None = None
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class TxnOp:
    """A nested transaction (see :meth:`Op.txn`)."""

    compare: tuple[Compare, ...]
    success: tuple[AnyOp, ...]
    failure: tuple[AnyOp, ...] = ()


AnyOp = RangeOp | PutOp | DeleteOp | TxnOp


def _range_end(key: bytes, range_end: Bytes | None, prefix: bool) -> bytes | None:
    if prefix:
        if range_end is not None:
            raise ValueError("give either prefix=True or range_end, not both")
        return prefix_end(key)
    return None if range_end is None else to_bytes(range_end)


class Op:
    """Builders of the operations a transaction can run."""

    @staticmethod
    def get(
        key: Bytes,
        *,
        prefix: bool = False,
        range_end: Bytes | None = None,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
        revision: int = 0,
        sort_by_create: bool = False,
        descending: bool = False,
        max_create_revision: int = 0,
    ) -> RangeOp:
        """Read ``key``, every key with prefix ``key``, or ``[key, range_end)``.

        With ``sort_by_create`` keys come in create-revision order (newest first with
        ``descending``); ``max_create_revision`` keeps only keys created at or before it.
        """
        k = to_bytes(key)
        return RangeOp(
            k,
            _range_end(k, range_end, prefix),
            limit,
            keys_only,
            count_only,
            serializable,
            revision,
            sort_by_create,
            descending,
            max_create_revision,
        )

    @staticmethod
    def put(
        key: Bytes,
        value: Bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_lease: bool = False,
    ) -> PutOp:
        """Write ``value`` at ``key``, attached to ``lease`` (0: none)."""
        return PutOp(to_bytes(key), to_bytes(value), lease, prev_kv, ignore_lease)

    @staticmethod
    def delete(
        key: Bytes, *, prefix: bool = False, range_end: Bytes | None = None, prev_kv: bool = False
    ) -> DeleteOp:
        """Delete ``key``, every key with prefix ``key``, or ``[key, range_end)``."""
        k = to_bytes(key)
        return DeleteOp(k, _range_end(k, range_end, prefix), prev_kv)

    @staticmethod
    def txn(
        compare: Sequence[Compare], success: Sequence[AnyOp], failure: Sequence[AnyOp] = ()
    ) -> TxnOp:
        """A nested transaction."""
        return TxnOp(tuple(compare), tuple(success), tuple(failure))


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The answer to a read.

    Attributes:
        kvs: the keys read, in key order (or create order when asked).
        revision: the store revision the read saw.
        count: the number of keys in the range (may exceed ``len(kvs)`` with a limit).
        more: whether keys were left out by a limit.
    """

    kvs: list[KeyValue]
    revision: int
    count: int
    more: bool = False

    @property
    def first(self) -> KeyValue | None:
        """The first key read, or ``None``."""
        return self.kvs[0] if self.kvs else None


@dataclass(frozen=True, slots=True)
class PutResult:
    """The answer to a put: its revision and, when asked, the previous key."""

    revision: int
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """The answer to a delete: its revision, how many keys went, and the old keys if asked."""

    revision: int
    deleted: int
    prev_kvs: list[KeyValue] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TxnResult:
    """The answer to a transaction.

    Attributes:
        succeeded: whether every compare held (the success branch ran).
        revision: the store revision after the transaction.
        responses: one result per operation of the branch that ran.
    """

    succeeded: bool
    revision: int
    responses: list[RangeResult | PutResult | DeleteResult | TxnResult]

    def range(self, index: int) -> RangeResult:
        """The result of operation ``index``, which must have been a read."""
        result = self.responses[index]
        if not isinstance(result, RangeResult):
            raise TypeError(f"operation {index} was not a read")
        return result


class EventType(enum.Enum):
    """What a watch event reports."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch.

    Attributes:
        type: put or delete.
        kv: the key after the change; for a delete only ``key`` and ``mod_revision``
            (the deletion's revision) are meaningful.
        prev_kv: the key before the change, when the watch asked for it.
    """

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        """The revision of the change."""
        return self.kv.mod_revision
