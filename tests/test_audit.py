"""The audit log: a hash chain in etcd; tampering found and located, signatures, retention."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import foundation_etcd as fe
from foundation_etcd import Config, connect
from foundation_etcd._coord.audit import AuditLog
from foundation_etcd._coord.audit_keys import load_public_key, load_signing_key
from foundation_etcd._core.records import AuditRecord
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parent.parent


async def fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        await log.append("spawn", {"agent": f"a{i}"})


def problems(report) -> set[tuple[int, str]]:
    return {(p.seq, p.kind) for p in report.problems}


async def test_appends_form_a_valid_chain(etcd_config: Config) -> None:
    with anyio.fail_after(20):
        async with open_transport(etcd_config) as t:
            log = AuditLog(t, etcd_config.keyspace, actor="n1")
            first = await log.append("leader", {"election": "scheduler"})
            assert first.seq == 1
            await fill(log, 4)
            recs = await log.records()
            assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
            assert all(b.prev == a.digest for a, b in itertools.pairwise(recs))
            assert [r.seq for r in await log.records(since=3)] == [4, 5]
            report = await log.verify()
            assert report.ok, report.problems
            assert (report.records, report.first_seq, report.head_seq) == (5, 1, 5)
            # another writer (a fresh log object) continues the same chain
            other = AuditLog(t, etcd_config.keyspace, actor="n2")
            assert (await other.append("drain", {"node": "n1"})).seq == 6
            assert (await log.append("drain", {"node": "n2"})).seq == 7  # stale head: retried
            assert (await log.verify()).ok


async def test_edit_delete_swap_are_each_found_by_seq(etcd_config: Config) -> None:
    with anyio.fail_after(20):
        async with open_transport(etcd_config) as t:
            ks = etcd_config.keyspace
            log = AuditLog(t, ks, actor="n1")
            await fill(log, 12)
            # edit seq 3's details (keeping a well-formed record)
            kv = await t.get(ks.audit_record(3))
            assert kv is not None
            d = json.loads(kv.value)
            d["details"] = {"agent": "forged"}
            await t.put(ks.audit_record(3), json.dumps(d).encode())
            report = await log.verify()
            assert problems(report) == {(3, "changed")}, report.problems
            assert "seq 3" in str(report.problems[0])
            await t.put(ks.audit_record(3), kv.value)  # restore
            assert (await log.verify()).ok
            # delete seq 6
            await t.delete(ks.audit_record(6))
            report = await log.verify()
            assert problems(report) == {(6, "removed")}, report.problems
            # swap the values of seq 9 and 10
            k9, k10 = await t.get(ks.audit_record(9)), await t.get(ks.audit_record(10))
            assert k9 is not None and k10 is not None
            await t.put(ks.audit_record(9), k10.value)
            await t.put(ks.audit_record(10), k9.value)
            report = await log.verify()
            assert problems(report) == {(6, "removed"), (9, "reordered"), (10, "reordered")}
            # edit the last record: only the head's hash shows it
            last = await t.get(ks.audit_record(12))
            assert last is not None
            await t.put(ks.audit_record(12), last.value.replace(b"a11", b"zzz"))
            report = await log.verify()
            assert (12, "changed") in problems(report), report.problems
            # a head pointing at a record that is not the last
            await t.put(ks.audit_head(), json.dumps({"seq": 11, "hash": "x"}).encode())
            report = await log.verify()
            assert (11, "head") in problems(report), report.problems
            # the last records deleted: the head names what is missing
            await t.put(ks.audit_record(12), last.value)
            await t.put(ks.audit_head(), json.dumps({"seq": 14, "hash": "x"}).encode())
            report = await log.verify()
            assert (13, "removed") in problems(report), report.problems
            await t.put(ks.audit_head(), b"{}")
            assert (12, "head") in problems(await log.verify())
            await t.put(ks.audit_record(7), b"not json")
            assert (7, "malformed") in problems(await log.verify())


async def test_keys_that_are_no_records_are_named_and_leave_the_chain_alone(
    etcd_config: Config,
) -> None:
    with anyio.fail_after(20):
        async with open_transport(etcd_config) as t:
            ks = etcd_config.keyspace
            log = AuditLog(t, ks, actor="n1")
            await fill(log, 2)
            prefix = ks.audit_records_prefix()
            one = await t.get(ks.audit_record(1))
            assert one is not None
            for junk in (b"abc", b"5", b"000000000000", b"0000000000019"):  # another client's
                await t.put(prefix + junk, one.value)
            report = await log.verify()
            assert problems(report) == {(0, "malformed")}, report.problems
            assert len(report.problems) == 4 and report.records == 2, report
            assert all("not a record's key" in p.message for p in report.problems)
            assert [r.seq for r in await log.records()] == [1, 2]
            await log.append("more", {})  # the chain goes on past them
            assert [r.seq for r in await log.records()] == [1, 2, 3]


async def test_signatures(etcd_config: Config) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with anyio.fail_after(20):
        async with open_transport(etcd_config) as t:
            ks = etcd_config.keyspace
            log = AuditLog(t, ks, actor="n1", signing_key=key)
            await fill(log, 4)
            public = [key.public_key()]
            assert (await log.verify(public)).ok
            assert problems(await log.verify([other.public_key()])) == {
                (s, "signature") for s in (1, 2, 3, 4)
            }
            # re-sign seq 2 with another key: the hash chain holds, the signature does not
            kv = await t.get(ks.audit_record(2))
            assert kv is not None
            rec = AuditRecord.decode(kv.value)
            forged = AuditRecord(
                rec.seq, rec.time, rec.actor, rec.kind, rec.details, rec.prev,
                other.sign(rec.canonical()).hex(),
            )  # fmt: skip
            await t.put(ks.audit_record(2), forged.encode())
            assert (await log.verify()).ok  # without keys: the chain only
            assert problems(await log.verify(public)) == {(2, "signature")}
            # an unsigned writer's record fails when keys are required
            await AuditLog(t, ks, actor="n2").append("limit", {"resource": "gpu"})
            assert problems(await log.verify(public)) == {(2, "signature"), (5, "signature")}
            # keys load from PEM
            pem = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            assert problems(await log.verify([load_public_key(pem)])) == {
                (2, "signature"),
                (5, "signature"),
            }


async def test_trim_keeps_the_chain_verifiable(etcd_config: Config) -> None:
    key = Ed25519PrivateKey.generate()
    with anyio.fail_after(20):
        async with open_transport(etcd_config) as t:
            ks = etcd_config.keyspace
            log = AuditLog(t, ks, actor="n1", signing_key=key)
            assert await log.trim(5) is None  # nothing yet
            await fill(log, 10)
            assert await log.trim(20) is None
            cp = await log.trim(3)
            assert cp is not None and cp.seq == 11 and cp.details["through"] == 7
            assert [r.seq for r in await log.records()] == [8, 9, 10, 11]
            report = await log.verify([key.public_key()])
            assert report.ok, report.problems
            assert report.first_seq == 8
            await fill(log, 2)
            assert (await log.verify([key.public_key()])).ok
            # a record removed below the checkpoint's cut is still found
            saved = await t.get(ks.audit_record(8))
            assert saved is not None
            await t.delete(ks.audit_record(8))
            assert problems(await log.verify()) == {(8, "removed")}
            kv8 = AuditRecord(8, 0.0, "x", "spawn", {}, "0" * 64)
            await t.put(ks.audit_record(8), kv8.encode())
            assert problems(await log.verify()) == {(8, "changed")}
            # trim to nothing but the checkpoint, then keep going
            await t.put(ks.audit_record(8), saved.value)
            assert (await log.verify()).ok
            cp2 = await log.trim(0)
            assert cp2 is not None and [r.seq for r in await log.records()] == [cp2.seq]
            await fill(log, 1)
            report = await log.verify([key.public_key()])
            assert report.ok, report.problems


WORKER = """
import sys, anyio
import foundation_etcd as fe
from foundation_etcd import Config, connect
from foundation_etcd._coord.audit import AuditLog
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import wait_until

async def main(endpoints, namespace, actor, n):
    cfg = Config(endpoints=endpoints.split(","), namespace=namespace)
    async with open_transport(cfg) as t:
        log = AuditLog(t, cfg.keyspace, actor=actor)
        for i in range(int(n)):
            await log.append("spawn", {"i": i})

anyio.run(main, *sys.argv[1:])
"""


def run_writers(endpoints: list[str], namespace: str, writers: int, each: int) -> list[int]:
    """Run ``writers`` processes appending ``each`` records; their exit statuses."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    args = [",".join(endpoints), namespace]
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, *args, f"w{i}", str(each)], env=env)
        for i in range(writers)
    ]
    try:
        return [p.wait(120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.once
async def test_concurrent_writers_form_one_chain(
    etcd_config: Config, etcd_endpoints: list[str], etcd_namespace: str
) -> None:
    # 4 processes, 250 appends each, all racing on the one head
    with anyio.fail_after(150):
        codes = await anyio.to_thread.run_sync(run_writers, etcd_endpoints, etcd_namespace, 4, 250)
    assert codes == [0, 0, 0, 0]
    with anyio.fail_after(20):
        async with open_transport(etcd_config) as t:
            log = AuditLog(t, etcd_config.keyspace, actor="check")
            recs = await log.records()
            assert [r.seq for r in recs] == list(range(1, 1001))
            assert {r.actor for r in recs} == {"w0", "w1", "w2", "w3"}
            seen = {(r.actor, r.details["i"]) for r in recs}
            assert len(seen) == 1000  # each append recorded exactly once
            report = await log.verify()
            assert report.ok, report.problems


def cli(endpoints: list[str], namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "foundation_etcd.cli", "--endpoints", ",".join(endpoints)),
            *("--namespace", namespace, "audit", *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONWARNINGS="ignore"),
    )


@pytest.mark.once
async def test_cli_list_and_verify(
    etcd_config: Config, etcd_endpoints: list[str], etcd_namespace: str, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "audit.pub"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with anyio.fail_after(60):
        async with open_transport(etcd_config) as t:
            log = AuditLog(t, etcd_config.keyspace, actor="n1", signing_key=key)
            await fill(log, 3)
            out = await anyio.to_thread.run_sync(
                cli, etcd_endpoints, etcd_namespace, "verify", "--public-key", str(pem)
            )
            assert out.returncode == 0, out.stderr
            assert "3 record(s)" in out.stdout
            listed = await anyio.to_thread.run_sync(
                cli, etcd_endpoints, etcd_namespace, "list", "-o", "json", "--since", "1"
            )
            assert [r["seq"] for r in json.loads(listed.stdout)["items"]] == [2, 3]
            await t.delete(etcd_config.keyspace.audit_record(2))
            out = await anyio.to_thread.run_sync(cli, etcd_endpoints, etcd_namespace, "verify")
            assert out.returncode == 1, (out.stdout, out.stderr)
            assert "seq 2: removed" in out.stdout
            out = await anyio.to_thread.run_sync(
                cli, etcd_endpoints, etcd_namespace, "verify", "--public-key", "/nonexistent"
            )
            assert out.returncode == 2, (out.stdout, out.stderr)


@fe.clustered("audit-worker", critical=True)
class Worker:
    async def run(self, ctx: fe.AgentRunContext) -> None:
        await anyio.sleep_forever()

    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        raise RuntimeError("poison")


async def test_cluster_decisions_are_recorded(etcd_config: Config, tmp_path: Path) -> None:
    """Every decision kind is recorded, each signed with the configured key."""
    classes = {"audit-worker": Worker}
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "audit-key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cfg = etcd_config.with_options(signal_max_attempts=1, audit_signing_key=pem)
    with anyio.fail_after(60):
        async with connect(cfg, node_id="aa") as a, anyio.create_task_group() as tg:
            tg.start_soon(lambda: a.serve(classes))  # campaigns: a "leader" record
            log = AuditLog(a.transport, a.keyspace, actor="test")

            async def kinds() -> list[str]:
                return [r.kind for r in await log.records()]

            async with connect(cfg, node_id="ab") as b, anyio.create_task_group() as tb:
                tb.start_soon(lambda: b.serve(classes, scheduler=False))
                await a.spawn(Worker, "w1", placement="pinned:ab")
                await a.quotas.set_limit("gpu", 2)
                assert await a.drain("ab") == [("w1", "aa")]
                await a.uncordon("ab")
                await a.spawn(Worker, "w2", placement="pinned:ab")
                tb.cancel_scope.cancel()
            # ab's lease is revoked: the leader moves w2 to aa
            await wait_until(lambda: _has(kinds, "failover"))
            await a.send("w1", "poison", {}, signal_id="p1")
            await wait_until(lambda: _has(kinds, "dead-letter"))
            await a.despawn("w1")
            recs = await log.records()
            by_kind = {r.kind: r for r in recs}
            assert {"leader", "spawn", "limit", "drain", "failover", "despawn"} <= set(by_kind)
            assert by_kind["dead-letter"].details["signal"] == "p1"
            assert by_kind["drain"].details == {"node": "ab", "moved": {"w1": "aa"}}
            assert by_kind["failover"].details["agent"] == "w2"
            assert by_kind["failover"].details["to"] == "aa"
            assert by_kind["limit"].details == {"resource": "gpu", "limit": 2}
            assert by_kind["leader"].actor == "aa"
            assert all(r.sig is not None for r in recs)  # Config.audit_signing_key
            assert (await log.verify([key.public_key()])).ok
            tg.cancel_scope.cancel()


async def test_a_bad_signing_key_fails_at_connect(etcd_config: Config, tmp_path: Path) -> None:
    with pytest.raises(fe.ConfigurationError, match=r"audit_signing_key.*cannot read"):
        etcd_config.with_options(audit_signing_key=tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    cfg = etcd_config.with_options(audit_signing_key=bad)

    async def revision() -> int:
        async with open_transport(etcd_config) as t:
            return await t.revision()

    before = await revision()
    with pytest.raises(fe.ConfigurationError, match="audit_signing_key: cannot load it"):
        async with connect(cfg, node_id="bad-key"):
            raise AssertionError("connected with a bad signing key")
    assert await revision() == before  # refused before anything was written
    env = {"FOUNDATION_ETCD_AUDIT_SIGNING_KEY": str(bad)}
    assert Config.from_env(env).audit_signing_key == bad


async def _has(kinds, kind: str) -> bool:
    return kind in await kinds()


def test_keys_need_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert load_signing_key(pem).public_key()
    with pytest.raises(fe.ConfigurationError, match="cannot load it"):
        load_signing_key(b"not a key")
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric", None)
    with pytest.raises(fe.ConfigurationError, match="needs the 'cryptography' package"):
        load_signing_key(pem)
    with pytest.raises(fe.ConfigurationError, match="needs the 'cryptography' package"):
        load_public_key(pem)
