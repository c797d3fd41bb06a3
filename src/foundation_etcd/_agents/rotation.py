"""Re-encryption: every stored checkpoint, payload and reply of a tenant under the newest key.

:func:`reencrypt` walks the tenant's agent state checkpoints, inboxes, dead letters and done
records (call replies) in pages, and rewrites each value that is plaintext or sealed under
another key than the keyring's primary one. Each rewrite is one transaction that compares
the value's ``mod_revision`` with what was read, and keeps its lease (done records live on
the retention lease), so it never overwrites a newer write: on a conflict the key is read
again and rewritten if it still needs it (a signal handled meanwhile is simply gone).

Guarantees:
    * Nothing is lost or duplicated: values change form, never content (the checkpoint's
      incarnation, a signal's fields, its signature and delivery bookkeeping stay).
    * Run it while the cluster works. A signal whose inbox entry is rewritten while its
      handler runs is handled again, as after a crash: its effect on state is still
      committed once (``delivery.py``), effects outside etcd see ``attempt`` unchanged.
    * A value that does not decrypt with the keyring is left as it is and reported; the
      run goes on. Running it again after it finished finds nothing to rewrite.

On lease loss: it holds no lease; interrupted, it is simply run again.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._core import codec as _codec
from .._core.errors import ConfigurationError, DecryptionError
from .._core.keys import Keyspace, prefix_end
from .._core.kv import Compare, KeyValue, Op
from .._core.sealing import Keyring, is_sealed
from .._core.signals import signal_location
from .._transport import Transport

__all__ = ["ReencryptReport", "reencrypt"]

_PAGE = 256
_RETRIES = 16


@dataclass(slots=True)
class ReencryptReport:
    """What :func:`reencrypt` did.

    Attributes:
        key_id: the key everything is now sealed under (the keyring's primary).
        scanned: values read.
        rewritten: values sealed again under ``key_id`` (plaintext ones included).
        current: values already under ``key_id``.
        vanished: values deleted before they could be rewritten (a handled signal).
        failed: ``(etcd key, reason)`` of the values that did not decrypt (left as they are).
    """

    key_id: str
    scanned: int = 0
    rewritten: int = 0
    current: int = 0
    vanished: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _reseal_blob(ring: Keyring, text: object, where: bytes) -> str | None:
    """A sealed field again under the primary key; ``None`` when it is already."""
    sealed = base64.b64decode(str(text), validate=True)
    if ring.key_of(sealed) == ring.primary:
        return None
    return base64.b64encode(ring.seal(ring.open(sealed, where), where)).decode()


def _reseal_signal(ring: Keyring, ks: Keyspace, d: dict[str, Any]) -> bool:
    """Seal a decoded signal's payload under the primary key in place; whether it changed."""
    where = signal_location(ks.prefix, str(d["subject"]), str(d["id"]))
    if "sealed" in d:
        new = _reseal_blob(ring, d["sealed"], where)
        if new is None:
            return False
        d["sealed"] = new
        return True
    plain = _codec.encode(d.pop("data", None), "signal", 2**21)
    d["sealed"] = base64.b64encode(ring.seal(plain, where)).decode()
    return True


def _rewrite(ring: Keyring, ks: Keyspace, kind: str, kv: KeyValue) -> bytes | None:
    """The value of ``kv`` sealed under the primary key; ``None`` if it already is.

    Raises:
        DecryptionError, ValueError: it cannot be opened (left as it is).
    """
    if kind == "state":
        if is_sealed(kv.value) and ring.key_of(kv.value) == ring.primary:
            return None
        return ring.seal(ring.open(kv.value, kv.key), kv.key)
    d = _codec.decode(kv.value)
    if not isinstance(d, dict):
        raise ValueError("not a record the library writes")
    if kind == "inbox":
        changed = _reseal_signal(ring, ks, d)
    elif kind == "dead":
        inner = d.get("signal")
        changed = isinstance(inner, dict) and _reseal_signal(ring, ks, inner)
    else:  # done: the reply of a call, if any
        agent, _, sid = kv.key[len(ks.key("signals", "done", "")) :].decode().partition("/")
        where = signal_location(ks.prefix, agent, sid) + b"#reply"
        if "sealed" in d:
            new = _reseal_blob(ring, d["sealed"], where)
            changed = new is not None
            if new is not None:
                d["sealed"] = new
        elif "reply" in d:
            plain = _codec.encode(d.pop("reply"), "reply", 2**21)
            d["sealed"] = base64.b64encode(ring.seal(plain, where)).decode()
            changed = True
        else:
            changed = False
    return _codec.encode(d, kind, 2**22) if changed else None


async def reencrypt(
    transport: Transport,
    keyspace: Keyspace,
    keyring: Keyring | None,
    *,
    progress: Callable[[ReencryptReport, str], None] | None = None,
    dry_run: bool = False,
) -> ReencryptReport:
    """Seal every checkpoint, payload and reply of ``keyspace`` under ``keyring``'s first key.

    Args:
        transport: an open transport (the tenant's user may run it).
        keyspace: the tenant.
        keyring: the keys (the first seals; every key of a stored value must be in it).
        progress: called after each page as ``progress(report, what)`` (``what`` is
            ``"state"``, ``"inbox"``, ``"dead"`` or ``"done"``).
        dry_run: count what would be rewritten (as ``rewritten``), write nothing.

    Raises:
        ConfigurationError: no keyring.
    """
    if keyring is None:
        raise ConfigurationError("encryption", "re-encrypting needs the keys (Config.encryption)")
    report = ReencryptReport(keyring.primary)
    prefixes = {
        "state": keyspace.key("agents", "state", ""),
        "inbox": keyspace.inboxes_prefix(),
        "dead": keyspace.dead_letters_prefix(),
        "done": keyspace.key("signals", "done", ""),
    }
    for kind, prefix in prefixes.items():
        start, end = prefix, prefix_end(prefix)
        while True:
            res = await transport.range(Op.get(start, range_end=end, limit=_PAGE))
            for kv in res.kvs:
                report.scanned += 1
                await _one(transport, keyring, keyspace, kind, kv, report, dry_run)
            if progress is not None:
                progress(report, kind)
            if not res.more or not res.kvs:
                break
            start = res.kvs[-1].key + b"\0"
    return report


async def _one(
    t: Transport,
    ring: Keyring,
    ks: Keyspace,
    kind: str,
    kv: KeyValue,
    report: ReencryptReport,
    dry_run: bool,
) -> None:
    current: KeyValue | None = kv
    for _ in range(_RETRIES):
        if current is None:
            report.vanished += 1
            return
        try:
            value = _rewrite(ring, ks, kind, current)
        except (DecryptionError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            report.failed.append((current.key.decode(errors="replace"), str(exc)))
            return
        if value is None or dry_run:
            report.current += value is None
            report.rewritten += value is not None
            return
        put = Op.put(current.key, value, lease=current.lease)
        res = await t.txn([Compare.mod_revision(current.key) == current.mod_revision], [put])
        if res.succeeded:
            report.rewritten += 1
            return
        current = await t.get(current.key)
    report.failed.append((kv.key.decode(errors="replace"), "changed too often while rewriting"))
