"""The command line's conventions against a running cluster: every listing's ``-o json``.

One scripted cluster (a node serving two agents, one of them holding its inbox, one whose
signal went to dead letters; an election with a waiting candidate; a lock with a waiter; a
quota with a held reservation) is listed with each command's ``-o json``, parsed, and its
fields checked against what the script made. The commands run in a worker thread through
``cli.main`` (each its own event loop, as from the shell); ``-w``, ``-v`` and Ctrl-C run as
subprocesses, as users run them. Bad usage exits 2 and writes nothing; a runtime error
exits 1 with one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import foundation_etcd as fe
from foundation_etcd import Config, connect
from foundation_etcd.cli import main
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parent.parent


@fe.clustered("cli-json-worker")
class Worker:
    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        if signal.type == "poison":
            raise RuntimeError("poison")
        if signal.type == "block":
            await anyio.sleep_forever()


def run_cli(cfg: Config, *args: str, before: bool = True) -> tuple[int, str, str]:
    """``foundation-etcd`` in this thread: (status, stdout, stderr)."""
    where = ["--endpoints", ",".join(cfg.endpoints), "--namespace", cfg.namespace]
    argv = [*where, *args] if before else [*args, *where]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors and --version
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


async def cli_json(cfg: Config, *args: str, before: bool = True) -> dict[str, Any]:
    code, out, err = await anyio.to_thread.run_sync(lambda: run_cli(cfg, *args, before=before))
    assert code == 0, (args, out, err)
    doc: dict[str, Any] = json.loads(out)
    return doc


def by(items: list[dict[str, Any]], field: str) -> dict[str, dict[str, Any]]:
    return {item[field]: item for item in items}


async def test_every_listing_json_against_a_running_cluster(etcd_config: Config) -> None:
    cfg = etcd_config.with_options(signal_max_attempts=1)
    with anyio.fail_after(60):
        async with (
            connect(cfg, node_id="jn", capacity={"cpu": 4}) as c,
            connect(cfg, node_id="jb") as b,
            connect(cfg, node_id="jd", hosts_agents=False) as d,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(c.serve)
            await c.spawn(Worker, "w-poison", placement="pinned:jn")
            await c.spawn(Worker, "w-block", placement="pinned:jb")  # jb serves nothing yet
            await c.send("w-poison", "poison", {}, signal_id="p1")
            for sid in ("b1", "b2", "b3"):
                await c.send("w-block", "block", {}, signal_id=sid)
            tg.start_soon(b.serve)  # its first read finds the three signals waiting

            async def dead() -> bool:
                return len(await c.dead_letters("w-poison")) == 1

            await wait_until(dead)
            await c.quotas.set_limit("gpu", 4)
            held = anyio.Event()
            release = anyio.Event()

            async def hold() -> None:
                async with (
                    c.election("jobs").campaign(value=b"jn-leads"),
                    c.lock("db").acquire(value=b"jn-holds"),
                    c.quotas.reserve({"gpu": 3}),
                ):
                    held.set()
                    await release.wait()

            tg.start_soon(hold)
            await held.wait()

            async def wait_behind() -> None:
                async with d.election("jobs").campaign(value=b"jd"):
                    pass

            async def lock_behind() -> None:
                async with d.lock("db").acquire(value=b"jd"):
                    pass

            tg.start_soon(wait_behind)
            tg.start_soon(lock_behind)

            async def queued() -> bool:
                elections = {e.name: e.waiting for e in await c.elections()}
                locks = {x.name: x.waiting for x in await c.locks()}
                return elections.get("jobs") == 1 and locks == {"db": 1}

            await wait_until(queued)

            nodes = await cli_json(cfg, "nodes", "-o", "json")
            assert nodes["kind"] == "NodeList" and nodes["revision"] > 0
            jn = by(nodes["items"], "node")["jn"]
            assert jn["capacity"] == {"cpu": 4} and jn["hosts_agents"] is True
            assert jn["cordoned"] is False and jn["pid"] == os.getpid()
            assert by(nodes["items"], "node")["jd"]["hosts_agents"] is False

            leaders = await cli_json(cfg, "leaders", "-o", "json", before=False)
            assert leaders["kind"] == "ElectionList"
            assert set(by(leaders["items"], "name")) == {"jobs", "scheduler"}
            jobs = by(leaders["items"], "name")["jobs"]
            assert jobs["name"] == "jobs" and jobs["leader"] == "jn-leads"
            assert jobs["waiting"] == 1 and jobs["lease_id"] == c.session.lease.id
            assert jobs["token"] > 0

            locks = await cli_json(cfg, "locks", "-o", "json")
            (db,) = locks["items"]
            assert locks["kind"] == "LockList" and db["holder"] == "jn-holds"
            assert db["waiting"] == 1 and db["name"] == "db"

            quotas = await cli_json(cfg, "quotas", "-o", "json", before=False)
            assert quotas["kind"] == "QuotaList"
            (gpu,) = quotas["items"]
            assert (gpu["resource"], gpu["limit"], gpu["used"], gpu["reservations"]) == (
                "gpu",
                4,
                3,
                1,
            )

            agents = await cli_json(cfg, "agents", "-o", "json")
            assert agents["kind"] == "AgentList"
            rows = by(agents["items"], "agent")
            assert set(rows) == {"w-poison", "w-block"}
            assert rows["w-block"]["state"] == "running" and rows["w-block"]["node"] == "jb"
            assert rows["w-block"]["class"] == "cli-json-worker"

            live = await cli_json(cfg, "agents", "--live", "-o", "json")
            assert live["kind"] == "LiveAgentList"
            assert {a["agent"]: a["node"] for a in live["items"]} == {
                "w-poison": "jn",
                "w-block": "jb",
            }

            inbox = await cli_json(cfg, "signals", "inbox", "w-block", "-o", "json")
            assert inbox["kind"] == "SignalList"
            assert [s["id"] for s in inbox["items"]] == ["b1", "b2", "b3"]
            assert all(s["type"] == "block" and s["data"] == {} for s in inbox["items"])

            deadl = await cli_json(cfg, "signals", "dead", "-o", "json")
            assert deadl["kind"] == "DeadLetterList"
            (letter,) = deadl["items"]
            assert (letter["agent"], letter["id"], letter["type"]) == ("w-poison", "p1", "poison")
            assert letter["attempts"] == 1 and "RuntimeError" in letter["reason"]

            status = await cli_json(cfg, "status", "-o", "json")
            assert status["kind"] == "Status" and status["namespace"] == cfg.namespace
            assert status["etcd"]["version"].startswith("3.")
            assert by(status["leaders"], "name")["jobs"]["leader"] == "jn-leads"
            assert by(status["locks"], "name")["db"]["waiting"] == 1
            assert by(status["quotas"], "resource")["gpu"]["used"] == 3
            assert {"jn", "jd"} <= set(by(status["nodes"], "node"))
            assert set(by(status["agents"], "agent")) == {"w-poison", "w-block"}
            assert status["inboxes"] == [{"agent": "w-block", "waiting": 3}]
            assert [x["id"] for x in status["dead_letters"]] == ["p1"]

            audit = await cli_json(cfg, "audit", "list", "-o", "json")
            assert audit["kind"] == "AuditRecordList"
            kinds = [r["kind"] for r in audit["items"]]
            assert kinds.count("spawn") == 2 and "dead-letter" in kinds
            assert [r["seq"] for r in audit["items"]] == list(range(1, len(kinds) + 1))

            async def backlog() -> bool:  # the serving node's report: what its deliverers saw
                here, there = await c.health(), await b.health()
                return dict(here.inbox_backlog) == {"w-poison": 0} and dict(
                    there.inbox_backlog
                ) == {"w-block": 3}

            await wait_until(backlog)
            health = await cli_json(cfg, "health", "-o", "json")  # the CLI process's own
            assert health["kind"] == "Health" and health["status"] == "ok"
            assert health["etcd_reachable"] is True and health["lease_alive"] is True
            assert health["serving"] is False and health["inbox_backlog"] == {}

            usage = await cli_json(cfg, "quota", "show", "gpu", "-o", "json")
            assert usage["kind"] == "QuotaUsage" and usage["used"] == 3 and usage["limit"] == 4

            # the table of the same listing: upper-case header, aligned, '-' when empty
            code, out, _ = await anyio.to_thread.run_sync(lambda: run_cli(cfg, "locks"))
            header, row = out.splitlines()
            assert code == 0 and header.split() == ["NAME", "HOLDER", "TOKEN", "LEASE", "WAITING"]
            assert row.split()[:2] == ["db", "jn-holds"] and row.split()[-1] == "1"

            release.set()
            tg.cancel_scope.cancel()


async def test_usage_and_runtime_errors_write_nothing(etcd_config: Config) -> None:
    async def revision() -> int:
        async with fe.lowlevel.open_transport(etcd_config) as t:
            return await t.revision()

    before = await revision()
    for args in (
        ("leaders", "-o", "yaml"),
        ("nodes", "--bogus"),
        ("locks", "extra"),
        ("status", "--namespace", "bad/ns"),
        ("node", "drain", "bad/node"),
        ("quota", "set", "gpu", "-1"),
    ):
        code, out, err = await anyio.to_thread.run_sync(lambda a=args: run_cli(etcd_config, *a))
        assert code == 2 and out == "", (args, code, out, err)
        assert "usage: foundation-etcd" in err and "Traceback" not in err, (args, err)
    assert await revision() == before  # nothing was sent: not even a session
    code, out, err = await anyio.to_thread.run_sync(
        lambda: run_cli(etcd_config, "quota", "show", "nosuch")
    )
    assert code == 1 and len(err.strip().splitlines()) == 1 and "nosuch" in err, err
    code, out, _ = await anyio.to_thread.run_sync(lambda: run_cli(etcd_config, "--version"))
    assert code == 0 and re.fullmatch(r"foundation-etcd \S+\n", out), out


# The command line as a terminal's foreground job runs it: Ctrl-C (SIGINT) reaches it. A
# shell that starts the test run in the background (``make test &``) has SIGINT ignored,
# and a child inherits that (Python keeps an ignored SIGINT ignored), so it is set back
# before the command starts.
_FOREGROUND = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'foundation-etcd'; runpy.run_module('foundation_etcd.cli', "
    "run_name='__main__', alter_sys=True)"
)


def _spawn(cfg: Config, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            *("-c", _FOREGROUND, *args),
            *("--endpoints", ",".join(cfg.endpoints), "--namespace", cfg.namespace),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )


async def test_watch_prints_each_change_and_ctrl_c_exits_quietly(etcd_config: Config) -> None:
    with anyio.fail_after(40):
        async with connect(etcd_config, node_id="wa", capacity={"cpu": 1}) as c:
            p = _spawn(etcd_config, "nodes", "-w", "-o", "json")
            assert p.stdout is not None and p.stderr is not None
            try:
                first = json.loads(await anyio.to_thread.run_sync(p.stdout.readline))
                assert by(first["items"], "node")["wa"]["cordoned"] is False
                await c.cordon("wa")
                second = json.loads(await anyio.to_thread.run_sync(p.stdout.readline))
                assert by(second["items"], "node")["wa"]["cordoned"] is True
                assert second["revision"] > first["revision"]
            finally:
                p.send_signal(signal.SIGINT)
                code = await anyio.to_thread.run_sync(p.wait)
            rest = p.stderr.read()
            p.stdout.close()
            p.stderr.close()
            assert code == 130 and rest == "", (code, rest)  # quietly: no traceback


async def test_verbose_logs_with_timestamps_and_drain_shows_progress(etcd_config: Config) -> None:
    with anyio.fail_after(40):
        async with connect(etcd_config, node_id="va", capacity={"cpu": 1}):
            p = _spawn(etcd_config, "node", "drain", "va", "-v")
            out, err = await anyio.to_thread.run_sync(p.communicate)
    assert p.returncode == 0, err
    assert out.splitlines()[0] == "node va cordoned: 0 agent(s) to move", out
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.search(rf"^{stamp} INFO foundation_etcd\.cli: node va cordoned", err, re.M), err


async def test_an_empty_listing_says_the_revision_it_was_read_at(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="e") as c:
        await c.transport.put(etcd_config.keyspace.key("moved"), b"1")  # past revision 1
        before = await c.transport.revision()
        listings = {"ElectionList": "leaders", "LockList": "locks", "QuotaList": "quotas"}
        for kind, command in listings.items():
            doc = await cli_json(etcd_config, command, "-o", "json")
            assert doc["kind"] == kind and doc["items"] == [], doc
            assert doc["revision"] >= before, doc  # not 0
