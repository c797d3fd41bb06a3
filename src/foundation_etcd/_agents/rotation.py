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

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .._core import codec as _codec
from .._core.errors import ConfigurationError, DecryptionError
from .._core.keys import Keyspace, prefix_end
from .._core.kv import Compare, KeyValue, Op
from .._core.sealing import Keyring, is_sealed
from .._core.signals import decode_signal, encode_signal
from .._transport import Transport
from .protection import open_reply, seal_reply

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


def _reseal_signal(ring: Keyring, ks: Keyspace, value: bytes) -> bytes | None:
    """An encoded signal with its payload sealed under the primary key; ``None`` if it is.

    Decoded and encoded again by the signal codec itself, so every field (the signature,
    the delivery bookkeeping) is kept as it is.
    """
    stored = decode_signal(value, keyring=ring, context=ks.prefix)
    if stored is None:
        raise ValueError("not a signal the library writes")
    if stored.error is not None:
        raise ValueError(stored.error)
    signal = stored.signal
    if signal.sealed is not None and ring.is_current(signal.sealed):
        return None
    return encode_signal(
        replace(signal, sealed=None),
        2**21,
        failures=stored.failures,
        not_before=stored.not_before,
        keyring=ring,
        context=ks.prefix,
    )


def _rewrite(ring: Keyring, ks: Keyspace, kind: str, kv: KeyValue) -> bytes | None:
    """The value of ``kv`` sealed under the primary key; ``None`` if it already is.

    Raises:
        DecryptionError, ValueError: it cannot be opened (left as it is).
    """
    if kind == "state":
        if is_sealed(kv.value) and ring.key_of(kv.value) == ring.primary:
            return None
        return ring.seal(ring.open(kv.value, kv.key), kv.key)
    if kind == "inbox":
        return _reseal_signal(ring, ks, kv.value)
    d = _codec.decode(kv.value)
    if not isinstance(d, dict):
        raise ValueError("not a record the library writes")
    if kind == "dead":
        inner = d.get("signal")
        if not isinstance(inner, dict):
            return None  # kept raw: nothing sealed in it
        new = _reseal_signal(ring, ks, _codec.encode(inner, "signal", 2**21))
        if new is None:
            return None
        d["signal"] = _codec.decode(new)
    else:  # done: the reply of a call, if any
        if "sealed" not in d and "reply" not in d:
            return None
        agent, _, sid = kv.key[len(ks.signals_done_prefix()) :].decode().partition("/")
        if "sealed" in d and ring.is_current(d["sealed"]):
            return None
        reply = open_reply(ring, ks, agent, sid, d)
        d.pop("reply", None)
        d |= seal_reply(ring, ks, agent, sid, reply, 2**21)
    return _codec.encode(d, kind, 2**22)


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
        "state": keyspace.agent_states_prefix(),
        "inbox": keyspace.inboxes_prefix(),
        "dead": keyspace.dead_letters_prefix(),
        "done": keyspace.signals_done_prefix(),
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
        except (DecryptionError, ValueError, KeyError, TypeError) as exc:
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
