"""Signed, encrypted signals and key rotation while etcd members are paused and killed.

A paused member (SIGSTOP) holds its connections open and answers nothing; a killed one
(SIGKILL) refuses them. Delivering a signed signal reads its signer's trusted key from etcd
and rotation rewrites values in transactions: both must ride out either fault without
refusing a good signal (no dead letter: a trust read that fails is not "untrusted") and
without losing or doubling one.

Signals are first sent sealed under ``k1`` while no node serves; then a node with the keys
``[k2, k1]`` and ``require_signed_signals`` serves them, more are sent, and rotation runs
in a loop, while the raft leader is paused past the request timeout, resumed, and another
member is killed and restarted. Afterwards every id sent is in its agent's checkpoint once,
in send order, nothing is dead-lettered, and a last rotation leaves every value under ``k2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import foundation_etcd as fe
from foundation_etcd import Config, EtcdError, connect
from foundation_etcd._core.checkpoints import decode_state
from foundation_etcd._core.sealing import is_sealed, new_key
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

AGENTS = ("p0", "p1")


@fe.clustered("protected-ledger", critical=True)
class Ledger:
    """Appends each handled signal's id to its checkpoint."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def get_state(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.seen = list(state["seen"])

    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        assert signal.signer is not None
        self.seen.append(signal.id)


async def send_surely(c: fe.Cluster, agent: str, sid: str) -> None:
    """Send until etcd accepts it: the same id again after an unknown outcome."""
    while True:
        try:
            await c.send(agent, "note", {"secret": f"s3cr3t-{sid}"}, signal_id=sid)
            return
        except EtcdError:
            await anyio.sleep(0.1)


async def test_signed_sealed_signals_and_rotation_through_paused_and_killed_members(
    etcd_cluster, etcd_namespace: str, tmp_path: Path
) -> None:
    pem = tmp_path / "node.pem"
    private = Ed25519PrivateKey.generate()
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    k1, k2 = new_key("k1"), new_key("k2")
    base = Config(
        endpoints=tuple(etcd_cluster.endpoints),
        namespace=etcd_namespace,
        ttl=10.0,
        request_timeout=1.5,
        signing_key=pem,
        require_signed_signals=True,
    )
    old, cfg = base.with_options(encryption=fe.Keyring([k1])), base.with_options(
        encryption=fe.Keyring([k2, k1])
    )
    sent: dict[str, list[str]] = {a: [] for a in AGENTS}
    with anyio.fail_after(100):
        async with open_transport(base) as t:
            await fe.Tenants(t).trust(base.tenant, private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw))  # fmt: skip
        async with connect(old, node_id="before") as c:  # placed here; not served
            for a in AGENTS:
                await c.spawn(Ledger, a)
            for i in range(10):
                for a in AGENTS:
                    await send_surely(c, a, f"old{i}")
                    sent[a].append(f"old{i}")
        async with connect(cfg, node_id="served") as c, anyio.create_task_group() as tg:
            tg.start_soon(c.serve)
            stop = anyio.Event()
            rotations: list[fe.ReencryptReport] = []

            async def sender() -> None:
                i = 0
                while not stop.is_set():
                    for a in AGENTS:
                        await send_surely(c, a, f"new{i}")
                        sent[a].append(f"new{i}")
                    i += 1

            async def rotator() -> None:
                while not stop.is_set():
                    try:
                        rotations.append(await c.reencrypt())
                    except EtcdError:
                        await anyio.sleep(0.1)

            async with anyio.create_task_group() as load:
                load.start_soon(sender)
                load.start_soon(rotator)
                paused = etcd_cluster.leader_index() or 0
                etcd_cluster.pause(paused)  # holds its connections, answers nothing
                await anyio.sleep(3.5)  # past the request timeout: the fault is the point
                etcd_cluster.resume(paused)
                killed = (paused + 1) % 3
                etcd_cluster.kill(killed)
                await anyio.sleep(2)
                await anyio.to_thread.run_sync(etcd_cluster.restart, killed)
                stop.set()

            async def all_handled() -> bool:
                for a in AGENTS:
                    kv = await c.transport.get(c.keyspace.agent_state(a))
                    state = decode_state(kv, cfg.keyring)
                    if state is None or state["seen"] != sent[a]:
                        return False
                return True

            await wait_until(all_handled)  # each id once, in send order
            assert sum(len(v) for v in sent.values()) > 40
            assert await c.dead_letters() == []  # no good signal refused under the faults
            final = await c.reencrypt()
            assert final.failed == [] and all(r.failed == [] for r in rotations)
            assert (await c.reencrypt(dry_run=True)).rewritten == 0
            state_kv = await c.transport.get(c.keyspace.agent_state("p0"))
            assert state_kv is not None and is_sealed(state_kv.value)
            assert fe.Keyring([k2]).key_of(state_kv.value) == "k2"
            tg.cancel_scope.cancel()
