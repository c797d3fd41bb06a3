"""Encryption at rest: sealed checkpoints, payloads, replies; moved or changed values; rotation."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import foundation_etcd as fe
from foundation_etcd import Config, connect
from foundation_etcd._core.checkpoints import decode_state
from foundation_etcd._core.sealing import is_sealed, new_key
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import wait_until

SECRET = "TOPSECRET-payload-7f3a"


@fe.clustered("enc-ledger", critical=True)
class Ledger:
    """Keeps every payload it is sent (so the checkpoint holds them)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.notes: list[Any] = []

    def get_state(self) -> dict[str, Any]:
        return {"seen": self.seen, "notes": self.notes}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.seen, self.notes = list(state["seen"]), list(state["notes"])

    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        self.seen.append(signal.id)
        self.notes.append(signal.data)

    @fe.action
    async def echo(self, text: str) -> str:
        """Return ``text`` (the reply is sealed like a payload)."""
        return text


# the keyring, without etcd -------------------------------------------------------------------
def test_keyring_seals_for_one_location_and_refuses_moved_changed_or_unknown() -> None:
    k1, k2 = new_key("k1"), new_key("k2")
    ring = fe.Keyring([k1])
    sealed = ring.seal(b'{"x":"' + SECRET.encode() + b'"}', b"/ns/t/agents/state/a")
    assert is_sealed(sealed) and SECRET.encode() not in sealed
    assert ring.key_of(sealed) == "k1"
    assert ring.open(sealed, b"/ns/t/agents/state/a") == b'{"x":"' + SECRET.encode() + b'"}'
    with pytest.raises(fe.DecryptionError, match="written for another location"):
        ring.open(sealed, b"/ns/t/agents/state/b")  # copied under another key
    changed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(fe.DecryptionError, match="has been changed"):
        ring.open(changed, b"/ns/t/agents/state/a")
    with pytest.raises(fe.DecryptionError, match="key 'k1' is not configured") as info:
        fe.Keyring([k2]).open(sealed, b"/ns/t/agents/state/a")
    assert info.value.key_id == "k1"
    # relabelled to another configured key's id: the key id is authenticated too
    both = fe.Keyring([k2, k1])
    relabelled = sealed.replace(b":k1:", b":k2:", 1)
    with pytest.raises(fe.DecryptionError, match="authentication failed under key 'k2'"):
        both.open(relabelled, b"/ns/t/agents/state/a")
    # every key of the ring opens, the first seals; plaintext passes through
    assert both.open(sealed, b"/ns/t/agents/state/a").endswith(b'"}')
    assert both.key_of(both.seal(b"{}", b"x")) == "k2"
    assert both.open(b'{"plain":1}', b"anywhere") == b'{"plain":1}'
    assert "secret" not in repr(k1).lower() or repr(k1) == "EncryptionKey(id='k1')"
    assert repr(both) == "Keyring(['k2', 'k1'])"


def test_key_files_and_configuration(tmp_path: Path) -> None:
    ring = fe.Keyring([new_key("2026-12"), new_key("2026-06")])
    path = tmp_path / "keys.json"
    path.write_text(ring.to_json())
    cfg = Config(encryption=path)
    assert cfg.keyring == ring and cfg.keyring is not None and cfg.keyring.primary == "2026-12"
    assert Config.from_env({"FOUNDATION_ETCD_ENCRYPTION": str(path)}).keyring == ring
    assert base64.b64encode(ring.keys[0].secret).decode() not in repr(cfg)
    cases = {
        "{}": "expected",
        '{"keys": []}': "at least one",
        '{"keys": [{"id": "a", "secret": "c2hvcnQ="}]}': "must be 16, 24 or 32 bytes",
        '{"keys": [{"id": "a b", "secret": ""}]}': "key id must be",
        '{"keys": [{"id": "a", "secret": "!!"}]}': "expected",
    }
    for text, why in cases.items():
        path.write_text(text)
        with pytest.raises(fe.ConfigurationError, match=why):
            Config(encryption=path)
    with pytest.raises(fe.ConfigurationError, match="cannot read"):
        Config(encryption=tmp_path / "missing.json")
    with pytest.raises(fe.ConfigurationError, match="must be a key file or a Keyring"):
        Config(encryption=42)  # type: ignore[arg-type]
    key = new_key("dup")
    with pytest.raises(fe.ConfigurationError, match="repeat"):
        fe.Keyring([key, key])


# against etcd ----------------------------------------------------------------------------------
@asynccontextmanager
async def node(cfg: Config, node_id: str) -> AsyncIterator[fe.Cluster]:
    async with connect(cfg, node_id=node_id) as c, anyio.create_task_group() as tg:
        tg.start_soon(c.serve)
        yield c
        tg.cancel_scope.cancel()


async def raw_values(cfg: Config) -> dict[bytes, bytes]:
    async with open_transport(cfg.with_options(encryption=None)) as t:
        res = await t.get_prefix(cfg.keyspace.prefix)
    return {kv.key: kv.value for kv in res.kvs}


async def seen(c: fe.Cluster, agent_id: str) -> list[str]:
    kv = await c.transport.get(c.keyspace.agent_state(agent_id))
    state = decode_state(kv, c.transport.config.keyring)
    return [] if state is None else list(state["seen"])


@pytest.mark.etcd
async def test_encrypted_cluster_keeps_no_plaintext_and_restores(etcd_config: Config) -> None:
    ring = fe.Keyring([new_key("k1")])
    cfg = etcd_config.with_options(encryption=ring)
    with anyio.fail_after(30):
        async with node(cfg, "n1") as c:
            await c.spawn(Ledger, "l1")
            await c.send("l1", "note", {"secret": SECRET}, signal_id="s1")
            assert await c.call("l1", "echo", {"text": SECRET}) == SECRET

            async def handled() -> bool:
                return "s1" in await seen(c, "l1")

            await wait_until(handled)
            values = await raw_values(cfg)
            assert values and not [k for k, v in values.items() if SECRET.encode() in v]
            ks = cfg.keyspace
            assert is_sealed(values[ks.agent_state("l1")])
            done = json.loads(values[ks.signal_done("l1", "s1")])
            assert "reply" not in done
            # a signal waiting in the inbox is sealed too (its node does not serve)
            async with connect(cfg, node_id="idle"):
                await c.spawn(Ledger, "l2", placement="pinned:idle")
                await c.send("l2", "note", {"secret": SECRET}, signal_id="w1")
                raw = (await raw_values(cfg))[ks.inbox("l2", "w1")]
                assert SECRET.encode() not in raw and "data" not in json.loads(raw)
                waiting = await c.inbox("l2")
                assert [s.data for s in waiting] == [{"secret": SECRET}]
        # a process without the keys cannot read it, and says why
        kv_state = None
        async with open_transport(etcd_config) as t:
            kv_state = await t.get(ks.agent_state("l1"))
        with pytest.raises(fe.DecryptionError, match="no encryption keys"):
            decode_state(kv_state)
        assert decode_state(kv_state, ring)["notes"][0] == {"secret": SECRET}


@pytest.mark.etcd
async def test_moved_or_changed_values_do_not_decrypt(etcd_config: Config) -> None:
    ring = fe.Keyring([new_key("k1")])
    cfg = etcd_config.with_options(encryption=ring)
    ks = cfg.keyspace
    with anyio.fail_after(30):
        async with node(cfg, "n1") as c:
            await c.spawn(Ledger, "a")
            await c.spawn(Ledger, "b")
            await c.send("a", "note", {"secret": SECRET}, signal_id="s1")

            async def handled() -> bool:
                return await seen(c, "a") == ["s1"]

            await wait_until(handled)
            values = await raw_values(cfg)
            # a checkpoint copied under another agent's key
            state_a = values[ks.agent_state("a")]
            async with open_transport(etcd_config) as t:
                await t.put(ks.agent_state("b") + b"-copy", state_a)
                copied = await t.get(ks.agent_state("b") + b"-copy")
            with pytest.raises(fe.DecryptionError, match="another location"):
                decode_state(copied, ring)
            # a sealed payload moved to another agent (its envelope rewritten to match)
            async with connect(cfg, node_id="idle"):
                await c.spawn(Ledger, "w", placement="pinned:idle")
                await c.send("w", "note", {"secret": SECRET}, signal_id="m1")
                envelope = json.loads((await raw_values(cfg))[ks.inbox("w", "m1")])
            envelope["subject"] = "b"
            changed = dict(envelope, id="m2")
            blob = bytearray(base64.b64decode(changed["sealed"]))
            blob[-3] ^= 0x40
            changed["sealed"] = base64.b64encode(bytes(blob)).decode()
            changed["subject"] = "b"
            async with open_transport(etcd_config) as t:
                await t.put(ks.inbox("b", "m1"), json.dumps(envelope).encode())
                await t.put(ks.inbox("b", "m2"), json.dumps(changed).encode())

            async def dead() -> bool:
                return len(await c.dead_letters("b")) == 2

            await wait_until(dead)
            letters = {d.signal_id: d for d in await c.dead_letters("b")}
            for sid in ("m1", "m2"):
                assert letters[sid].reason.startswith("undecryptable: "), letters[sid].reason
                assert "another location" in letters[sid].reason
            assert await seen(c, "b") == []  # never handled


@pytest.mark.etcd
async def test_rotation_under_load_from_plaintext_loses_nothing(etcd_config: Config) -> None:
    k1, k2 = new_key("k1"), new_key("k2")
    agents = ["r0", "r1", "r2"]
    sent: dict[str, list[str]] = {a: [] for a in agents}
    plain = etcd_config
    with anyio.fail_after(90):
        # 1. plaintext, as before encryption was configured
        async with node(plain, "p1") as c:
            for a in agents:
                await c.spawn(Ledger, a)
            for i in range(10):
                for a in agents:
                    await c.send(a, "note", {"i": i, "s": SECRET}, signal_id=f"p{i}")
                    sent[a].append(f"p{i}")
            assert await c.call("r0", "echo", {"text": SECRET}) == SECRET
            for a in agents:
                await wait_until(lambda a=a: _all_seen(c, a, sent[a]))
        # 2. k1 seals new values; the plaintext ones are still read
        async with node(plain.with_options(encryption=fe.Keyring([k1])), "p2") as c:
            for i in range(5):
                for a in agents:
                    await c.send(a, "note", {"i": i, "s": SECRET}, signal_id=f"q{i}")
                    sent[a].append(f"q{i}")
            for a in agents:
                await wait_until(lambda a=a: _all_seen(c, a, sent[a]))
        # 3. k2 first, k1 still known: rotate while signals flow
        cfg = plain.with_options(encryption=fe.Keyring([k2, k1]))
        reports: list[fe.ReencryptReport] = []
        async with node(cfg, "p3") as c:

            async def load() -> None:
                for i in range(30):
                    for a in agents:
                        await c.send(a, "note", {"i": i, "s": SECRET}, signal_id=f"z{i}")
                        sent[a].append(f"z{i}")

            async def rotate() -> None:
                for _ in range(3):
                    reports.append(await c.reencrypt())

            async with anyio.create_task_group() as tg:
                tg.start_soon(load)
                tg.start_soon(rotate)
            for a in agents:
                await wait_until(lambda a=a: _all_seen(c, a, sent[a]))
            final = await c.reencrypt()
            assert not final.failed and all(not r.failed for r in reports)
            assert sum(r.rewritten for r in reports) > 0
            again = await c.reencrypt(dry_run=True)
            assert again.rewritten == 0 and again.current == again.scanned
        # everything is sealed under k2: a process with k2 alone reads it all
        values = await raw_values(cfg)
        assert not [k for k, v in values.items() if SECRET.encode() in v]
        only_k2 = plain.with_options(encryption=fe.Keyring([k2]))
        async with node(only_k2, "p4") as c:
            for a in agents:
                got = await seen(c, a)
                assert got == sent[a]  # each once, in order: nothing lost or doubled
            await c.send("r1", "note", {"after": True}, signal_id="after")
            sent["r1"].append("after")
            await wait_until(lambda: _all_seen(c, "r1", sent["r1"]))


async def _all_seen(c: fe.Cluster, agent_id: str, ids: list[str]) -> bool:
    return await seen(c, agent_id) == ids


@pytest.mark.etcd
async def test_rotation_counts_a_done_record_whose_lease_ended_as_vanished(
    etcd_config: Config,
) -> None:
    from foundation_etcd._agents.rotation import ReencryptReport, _one

    ring = fe.Keyring([new_key("k1")])
    ks = etcd_config.keyspace
    key = ks.signal_done("a", "s1")
    with anyio.fail_after(20):
        async with open_transport(etcd_config) as t:
            lease = await t.lease_grant(60)
            await t.put(key, b'{"at":0,"inc":1,"rev":1,"reply":{"result":1}}', lease=lease.id)
            kv = await t.get(key)
            assert kv is not None
            await t.lease_revoke(lease.id)  # ends between read and write: the compare fails
            report = ReencryptReport("k1")
            await _one(t, ring, ks, "done", kv, report, False)
            assert (report.vanished, report.rewritten, report.failed) == (1, 0, [])
