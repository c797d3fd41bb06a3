"""``foundation-etcd encryption|signing ...`` and ``tenant trust|untrust|signers`` on etcd."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

import foundation_etcd as fe
from foundation_etcd.lowlevel import open_transport
from test_cli import cli_in_process  # tests/ is on sys.path (pytest's rootdir import mode)

pytestmark = pytest.mark.etcd


def test_key_commands_end_to_end(
    etcd_endpoints: list[str], etcd_namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cli(*args: str):  # type: ignore[no-untyped-def]
        return cli_in_process(etcd_endpoints, etcd_namespace, *args)

    # encryption keygen prints a key file that loads
    out = cli("encryption", "keygen", "k1")
    assert out.returncode == 0, out.stderr
    keys = tmp_path / "keys.json"
    keys.write_text(out.stdout)
    ring = fe.Keyring.from_file(keys)
    assert ring.primary == "k1" and len(ring.keys[0].secret) == 32
    assert cli("encryption", "keygen", "bad id").returncode == 2
    # rotate without keys: exit 1, one line; with keys it seals the plaintext checkpoint
    assert cli("encryption", "rotate").returncode == 1
    cfg = fe.Config(endpoints=tuple(etcd_endpoints), namespace=etcd_namespace)
    state_key = cfg.keyspace.agent_state("x1")

    async def put_plain() -> None:
        async with open_transport(cfg) as t:
            await t.put(state_key, b'{"incarnation":1,"state":{"n":1},"at":0}')

    anyio.run(put_plain)
    monkeypatch.setenv("FOUNDATION_ETCD_ENCRYPTION", str(keys))
    dry = cli("encryption", "rotate", "--dry-run", "-o", "json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["rewritten"] == 1
    assert json.loads(dry.stdout)["kind"] == "EncryptionRotation"
    done = cli("encryption", "rotate", "-o", "json")
    assert done.returncode == 0 and json.loads(done.stdout)["rewritten"] == 1
    assert "state: 1 read" in done.stderr  # progress
    assert json.loads(cli("encryption", "rotate", "-o", "json").stdout)["current"] == 1

    async def read_state() -> bytes:
        async with open_transport(cfg) as t:
            kv = await t.get(state_key)
            assert kv is not None
            return kv.value

    assert anyio.run(read_state).startswith(b"fe:enc:aesgcm:v1:k1:")
    monkeypatch.delenv("FOUNDATION_ETCD_ENCRYPTION")
    # signing keygen, trust, signers, untrust
    pem = tmp_path / "node.pem"
    made = cli("signing", "keygen", str(pem))
    assert made.returncode == 0, made.stderr
    key_id = made.stdout.strip()
    assert key_id.startswith("ed25519-") and (pem.stat().st_mode & 0o777) == 0o600
    assert cli("signing", "keygen", str(pem)).returncode == 2  # never overwritten
    assert cli("tenant", "trust", "default", str(pem) + ".pub", "--label", "n1").stdout.strip() == (
        key_id
    )
    assert cli("tenant", "trust", "default", str(keys)).returncode == 2  # not a public key
    long = cli("tenant", "trust", "default", str(pem) + ".pub", "--label", "x" * 100_000)
    assert long.returncode == 2 and "argument --label" in long.stderr  # before any I/O
    assert "at most 256 characters" in long.stderr and len(long.stderr) < 2_000
    listed = json.loads(cli("tenant", "signers", "default", "-o", "json").stdout)
    assert [(i["key_id"], i["label"]) for i in listed["items"]] == [(key_id, "n1")]
    assert "no longer trusted" in cli("tenant", "untrust", "default", key_id).stdout
    assert "was not trusted" in cli("tenant", "untrust", "default", key_id).stdout
    assert json.loads(cli("tenant", "signers", "default", "-o", "json").stdout)["items"] == []


def test_signing_keygen_never_overwrites_either_file_and_names_a_bad_path(
    etcd_endpoints: list[str], etcd_namespace: str, tmp_path: Path
) -> None:
    def cli(*args: str):  # type: ignore[no-untyped-def]
        return cli_in_process(etcd_endpoints, etcd_namespace, *args)

    key = tmp_path / "k"
    (tmp_path / "k.pub").write_bytes(b"mine")  # a public key file that is not this pair's
    out = cli("signing", "keygen", str(key))
    assert out.returncode == 2 and "exists" in out.stderr, out.stderr
    assert not key.exists() and (tmp_path / "k.pub").read_bytes() == b"mine"
    out = cli("signing", "keygen", str(tmp_path / "no-such-dir" / "k"))
    assert out.returncode == 2 and "cannot create" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "no-such-dir").exists()
    assert cli("signing", "keygen", str(tmp_path / "fresh")).returncode == 0
    assert (tmp_path / "fresh").exists() and (tmp_path / "fresh.pub").exists()
