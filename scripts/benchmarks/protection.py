"""Section ``protection``: what encryption at rest and signed signals cost (issue 14).

Two clusters in this process, on the same etcd, each hosting one agent of the same class: a
plain one (the "raw" column here) and one with ``Config.encryption`` (one AES-256 key),
``Config.signing_key`` (Ed25519) and ``require_signed_signals`` (the "library" column).
The protected side seals every payload, reply and checkpoint, signs every signal, and
verifies each one before its handler runs (its trusted key is cached after the first). In
alternating rounds:

* ``send``: returns once the signal is durable (build, sign, seal, one transaction);
* ``call``: a round trip through the agent's action, which changes its state (the reply
  and the checkpoint are sealed on the protected side, the signature checked).

Also the CPU of the primitives alone, on a 1 KiB payload (no I/O): seal + open, and
sign + verify.
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import foundation_etcd as fe
from benchmarks.harness import Bench, Case, Figure, Latency, Row, clocked, run_rounds
from foundation_etcd import connect
from foundation_etcd._core.sealing import new_key
from foundation_etcd._core.signing import load_signer, verify
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import wait_until

PAYLOAD = {"text": "x" * 1000}


@fe.clustered("bench-protected-ledger")
class Ledger:
    """Counts what it is sent; ``add`` changes the state and replies."""

    def __init__(self) -> None:
        self.total = 0

    def get_state(self) -> dict[str, Any]:
        """The checkpoint."""
        return {"total": self.total}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Back to a checkpoint."""
        self.total = int(state["total"])

    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        """Count it."""
        self.total += 1

    @fe.action
    async def add(self, n: int) -> int:
        """Add ``n``; return the total."""
        self.total += n
        return self.total


def _cpu(label: str, fn: Any, n: int = 2000) -> Figure:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Figure(label, None, statistics.median(samples) * 1e6, "µs", n)


async def section_protection(bench: Bench) -> list[Row]:
    """Send and call, plain and with encryption + signatures; the primitives' CPU."""
    s = bench.settings
    folder = Path(tempfile.mkdtemp(prefix="bench-protection-"))
    pem = folder / "node.pem"
    private = Ed25519PrivateKey.generate()
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ring = fe.Keyring([new_key("bench")])
    plain = bench.config("protection")
    guarded = plain.with_options(
        tenant="sealed", encryption=ring, signing_key=pem, require_signed_signals=True
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    sends = (f"s{i:08d}" for i in itertools.count())
    try:
        async with open_transport(plain) as t:
            await fe.Tenants(t).trust("sealed", public, label="bench")
        async with (
            connect(plain, node_id="bench-plain") as a,
            connect(guarded, node_id="bench-sealed") as b,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(a.serve)
            tg.start_soon(b.serve)
            await a.spawn(Ledger, "ledger", placement="pinned:bench-plain")
            await b.spawn(Ledger, "ledger", placement="pinned:bench-sealed")
            await wait_until(lambda: "ledger" in a.registry.owned())
            await wait_until(lambda: "ledger" in b.registry.owned())
            assert await b.call("ledger", "add", {"n": 0}) == 0  # warm: the key is cached

            def send(c: fe.Cluster) -> Any:
                return lambda: c.send("ledger", "note", PAYLOAD, signal_id=next(sends))

            def call(c: fe.Cluster) -> Any:
                return lambda: c.call("ledger", "add", {"n": 1})

            cases = [
                Case(
                    "send, 1 KiB payload (plain / sealed + signed)",
                    clocked(send(a)),
                    clocked(send(b)),
                    ops=s.coord_ops,
                ),
                Case(
                    "call round trip, stateful action (plain / sealed + signed + verified)",
                    clocked(call(a)),
                    clocked(call(b)),
                    ops=s.coord_ops,
                ),
            ]
            results = await run_rounds(bench, cases)
            assert await b.dead_letters() == []  # nothing was refused
            tg.cancel_scope.cancel()
    finally:
        await bench.delete_prefix(plain.keyspace.prefix)
        await bench.delete_prefix(guarded.keyspace.prefix)
        await bench.delete_prefix(plain.keyspace.signers_prefix())
    note = "raw column: no keys; library column: AES-256-GCM keyring, Ed25519 signing, required"
    rows: list[Row] = [Latency(label, raw, lib, note=note) for label, (raw, lib) in results.items()]
    data = os.urandom(1024)
    where = b"/bench/sealed/signal/ledger/s1"
    signer = load_signer(pem)
    signature = signer.sign(data)
    rows.append(_cpu("seal + open, 1 KiB (CPU)", lambda: ring.open(ring.seal(data, where), where)))
    rows.append(_cpu("sign, 1 KiB (CPU)", lambda: signer.sign(data)))
    rows.append(_cpu("verify, 1 KiB (CPU)", lambda: verify(signer.public_key, signature, data)))
    return rows
