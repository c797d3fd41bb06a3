"""Signed signals: trusted keys in etcd; forged, replayed, untrusted, unsigned ones refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import foundation_etcd as fe
from foundation_etcd import Config, connect
from foundation_etcd._core.signals import Signal, signed_bytes
from foundation_etcd._core.signing import load_signer
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import wait_until
from test_encryption import node  # tests/ is on sys.path (pytest's rootdir import mode)

pytestmark = pytest.mark.etcd


@fe.clustered("signed-ledger")
class Ledger:
    """Records each signal it handles and who signed it."""

    def __init__(self) -> None:
        self.seen: list[list[Any]] = []

    def get_state(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.seen = [list(x) for x in state["seen"]]

    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        self.seen.append([signal.id, signal.signer, signal.data])
        if signal.type == "forward":
            ctx.send(signal.data["to"], "note", {"via": self_id(ctx)})


def self_id(ctx: fe.SignalContext) -> str:
    return ctx.agent_id


def key_file(path: Path) -> Path:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


def public_pem(path: Path) -> bytes:
    return load_signer(path).public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def seen(c: fe.Cluster, agent_id: str) -> list[list[Any]]:
    kv = await c.transport.get(c.keyspace.agent_state(agent_id))
    return [] if kv is None else list(json.loads(kv.value)["state"]["seen"])


def test_the_signature_covers_every_field_the_sender_set() -> None:
    base = Signal(id="s1", type="t", source="n1", subject="a", data={"x": 1}, time=1.5)
    msg = signed_bytes(base, b"/ns/t/")
    assert signed_bytes(base, b"/ns/other/") != msg  # another tenant
    for change in (
        {"subject": "b"},
        {"id": "s2"},
        {"data": {"x": 2}},
        {"type": "u"},
        {"source": "n2"},
        {"time": 1.6},
        {"deadline": 9.0},
        {"reply": True},
        {"topic": "a.b"},
    ):
        other = Signal(**{**_fields(base), **change})
        assert signed_bytes(other, b"/ns/t/") != msg, change
    # the delivery bookkeeping is not covered (the delivering node rewrites it)
    assert signed_bytes(base.with_attempt(3, 99, "boom"), b"/ns/t/") == msg


def _fields(s: Signal) -> dict[str, Any]:
    return {f: getattr(s, f) for f in ("id", "type", "source", "subject", "data", "time")}


async def test_signed_signals_verified_and_forgeries_dead_lettered(
    etcd_config: Config, tmp_path: Path
) -> None:
    trusted = key_file(tmp_path / "trusted.pem")
    stranger = key_file(tmp_path / "stranger.pem")
    receiver_cfg = etcd_config.with_options(signing_key=trusted, require_signed_signals=True)
    ks = etcd_config.keyspace
    with anyio.fail_after(40):
        async with open_transport(etcd_config) as t:
            tenants = fe.Tenants(t)
            key_id = await tenants.trust(ks.tenant, public_pem(trusted), label="node n1")
            assert key_id == load_signer(trusted).key_id
            assert await tenants.trust(ks.tenant, public_pem(trusted)) == key_id  # idempotent
            listed = await tenants.signers(ks.tenant)
            assert [(s.key_id, s.label) for s in listed] == [(key_id, "node n1")]
        async with node(receiver_cfg, "n1") as c:
            await c.spawn(Ledger, "a")
            await c.spawn(Ledger, "b")
            await c.send("a", "note", {"n": 1}, signal_id="good")
            await c.send("a", "forward", {"to": "b"}, signal_id="fwd")  # an emit is signed too

            async def handled() -> bool:
                return len(await seen(c, "a")) == 2 and len(await seen(c, "b")) == 1

            await wait_until(handled)
            assert [x[:2] for x in await seen(c, "a")] == [["good", key_id], ["fwd", key_id]]
            assert (await seen(c, "b"))[0][1] == key_id
            # an idle node's inbox holds a signed signal to copy from
            async with connect(receiver_cfg, node_id="idle"):
                await c.spawn(Ledger, "w", placement="pinned:idle")
                await c.send("w", "note", {"amount": 10}, signal_id="orig")
                async with open_transport(etcd_config) as t:
                    orig = json.loads((await t.get(ks.inbox("w", "orig"))).value)  # type: ignore[union-attr]
            assert orig["sig"]["key"] == key_id
            crafted = {
                # replayed to another agent (subject and key rewritten to match)
                "replayed": dict(orig, subject="a", id="replayed"),
                # the payload changed
                "forged": dict(orig, subject="a", id="forged", data={"amount": 10_000}),
                # no signature, while signatures are required
                "unsigned": {k: v for k, v in orig.items() if k != "sig"}
                | {"subject": "a", "id": "unsigned"},
            }
            before = await seen(c, "a")
            async with open_transport(etcd_config) as t:
                for sid, value in crafted.items():
                    await t.put(ks.inbox("a", sid), json.dumps(value).encode())
            # signed by a key the tenant does not trust, through the library
            async with connect(
                etcd_config.with_options(signing_key=stranger), node_id="s", hosts_agents=False
            ) as s:
                await s.send("a", "note", {"n": 2}, signal_id="stranger")
            async with connect(etcd_config, node_id="u", hosts_agents=False) as u:
                await u.send("a", "note", {"n": 3}, signal_id="plain")

            async def dead() -> bool:
                return len(await c.dead_letters("a")) == 5

            await wait_until(dead)
            reasons = {d.signal_id: d.reason for d in await c.dead_letters("a")}
            assert reasons["replayed"].startswith("forged: ")
            assert reasons["forged"].startswith("forged: ")
            assert reasons["unsigned"].startswith("unsigned")
            assert reasons["plain"].startswith("unsigned")
            assert reasons["stranger"].startswith("untrusted signer: ")
            assert await seen(c, "a") == before  # none was handled
            # untrusted now: the key's signatures are refused once the cache expires
            async with open_transport(etcd_config) as t:
                assert await fe.Tenants(t).untrust(ks.tenant, key_id)
                assert not await fe.Tenants(t).untrust(ks.tenant, key_id)
            await anyio.sleep(5.2)  # protection.TRUST_TTL: the bound under test
            await c.send("a", "note", {"n": 4}, signal_id="after-untrust")

            async def refused() -> bool:
                return "after-untrust" in {d.signal_id for d in await c.dead_letters("a")}

            await wait_until(refused)
            assert await seen(c, "a") == before


async def test_without_require_unsigned_is_accepted_but_forged_is_not(
    etcd_config: Config, tmp_path: Path
) -> None:
    signer = key_file(tmp_path / "k.pem")
    ks = etcd_config.keyspace
    with anyio.fail_after(30):
        async with open_transport(etcd_config) as t:
            await fe.Tenants(t).trust(ks.tenant, public_pem(signer))
        async with node(etcd_config, "n1") as c:  # verifies, does not require
            await c.spawn(Ledger, "a")
            await c.send("a", "note", {"n": 1}, signal_id="plain")
            async with connect(
                etcd_config.with_options(signing_key=signer), node_id="s", hosts_agents=False
            ) as s:
                await s.send("a", "note", {"n": 2}, signal_id="signed")

            async def handled() -> bool:
                return len(await seen(c, "a")) == 2

            await wait_until(handled)
            got = await seen(c, "a")
            assert [x[:2] for x in got] == [["plain", None], ["signed", load_signer(signer).key_id]]
            async with open_transport(etcd_config) as t:
                done = await t.get(ks.signal_done("a", "signed"))
                assert done is not None
                # the same signed value replayed under a new id: the id is signed
                value = {
                    "id": "replay",
                    "type": "note",
                    "source": "s",
                    "subject": "a",
                    "time": got[1][2] and 0.0,
                    "data": {"n": 2},
                    "sig": {"key": load_signer(signer).key_id, "value": "AAAA"},
                }
                await t.put(ks.inbox("a", "replay"), json.dumps(value).encode())

            async def dead() -> bool:
                return [d.signal_id for d in await c.dead_letters("a")] == ["replay"]

            await wait_until(dead)
            assert (await c.dead_letters("a"))[0].reason.startswith("forged: ")
