"""The command line, run as users run it (a subprocess), against the test etcd.

Usage errors are found before anything runs that a fresh process would do differently, so
most of them, and the signal commands' long script, run ``main()`` in a worker thread
(``cli_in_process``): the same parser, event loop per command and exit status, without an
interpreter start each. Node processes, the environment's settings and the import checks
of ``--agents`` keep real subprocesses.
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import foundation_etcd as fe
from foundation_etcd import Config, NoNodeFitsError, connect
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parent.parent


def cli(
    endpoints: list[str],
    namespace: str,
    *args: str,
    check: bool = True,
    cwd: Path = ROOT,
    python_flags: tuple[str, ...] = (),
    pythonpath: str = str(ROOT),
    env: dict[str, str] | None = None,
    timeout: float = 60,
):
    out = subprocess.run(
        [
            sys.executable,
            *python_flags,
            "-m",
            "foundation_etcd.cli",
            "--endpoints",
            ",".join(endpoints),
            "--namespace",
            namespace,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=pythonpath, PYTHONWARNINGS="ignore", **(env or {})),
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def cli_in_process(endpoints: list[str], namespace: str, *args: str) -> subprocess.CompletedProcess:
    """``cli`` without a new interpreter: ``main()`` in this thread, its own event loop.

    For usage errors (found before anything runs that a fresh process would do otherwise)
    and for commands that read no settings from the environment.
    """
    from foundation_etcd.cli import main

    argv = ["--endpoints", ",".join(endpoints), "--namespace", namespace, *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


async def store_revision(config: Config) -> int:
    """The store's revision, read with the library's transport (a read writes nothing)."""
    async with open_transport(config) as t:
        return (await t.txn([], [])).revision


def assert_one_line_error(out: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """Exit status ``code``, every word in stderr, and no traceback."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    for word in words:
        assert word in out.stderr, (word, out.stderr)
    if code == 1:  # a runtime error is one line; a usage error also prints the usage
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def start_node(endpoints: list[str], namespace: str, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "foundation_etcd.cli",
            "--endpoints",
            ",".join(endpoints),
            "--namespace",
            namespace,
            "node",
            "run",
            "--id",
            name,
            "--agents",
            "examples.agents",
            "--capacity",
            "cpu=4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore"),
    )


@pytest.mark.once
async def test_node_run_agents_drain_quota(
    etcd_endpoints: list[str], etcd_namespace: str, etcd_config: Config
) -> None:
    procs = [start_node(etcd_endpoints, etcd_namespace, name) for name in ("cli-a", "cli-b")]
    try:
        async with connect(etcd_config, node_id="t", hosts_agents=False) as c:
            with anyio.fail_after(20):
                await wait_until(lambda: {"cli-a", "cli-b"} <= set(c.nodes()))
            from examples.agents import Counter

            await c.spawn(Counter, "cnt", placement="pinned:cli-a")

            async def running_on(node: str) -> bool:
                return any(s.state == "running" and s.node_id == node for s in await c.agents())

            with anyio.fail_after(20):
                await wait_until(lambda: running_on("cli-a"))
            # a second process with a live id says so at once (no -v), then waits
            dup = start_node(etcd_endpoints, etcd_namespace, "cli-a")
            procs.append(dup)
            with anyio.fail_after(20):
                line = await anyio.to_thread.run_sync(dup.stderr.readline)
            assert "node 'cli-a' is announced under lease" in line, line
            assert "waiting up to" in line and dup.poll() is None
            dup.kill()
            nodes = await anyio.to_thread.run_sync(cli, etcd_endpoints, etcd_namespace, "nodes")
            assert "cli-a" in nodes.stdout and "cpu=4" in nodes.stdout
            agents = await anyio.to_thread.run_sync(cli, etcd_endpoints, etcd_namespace, "agents")
            assert "cnt" in agents.stdout and "running" in agents.stdout
            drained = await anyio.to_thread.run_sync(
                cli, etcd_endpoints, etcd_namespace, "node", "drain", "cli-a"
            )
            assert "cnt -> cli-b" in drained.stdout
            assert "node cli-a stays cordoned" in drained.stdout
            with anyio.fail_after(20):
                await wait_until(lambda: running_on("cli-b"))
        q = await anyio.to_thread.run_sync(
            cli, etcd_endpoints, etcd_namespace, "quota", "set", "gpu", "3"
        )
        assert "gpu: limit 3, used 0" in q.stdout
        shown = await anyio.to_thread.run_sync(
            cli, etcd_endpoints, etcd_namespace, "quota", "show", "gpu"
        )
        assert "gpu: limit 3, used 0" in shown.stdout
        h = await anyio.to_thread.run_sync(cli, etcd_endpoints, etcd_namespace, "health")
        assert h.stdout.startswith("ok: etcd at") and "session lease" in h.stdout, h.stdout
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()


@pytest.mark.once
def test_bad_endpoint_is_a_clear_error(etcd_namespace: str) -> None:
    out = cli(["127.0.0.1:1"], etcd_namespace, "nodes", check=False)
    assert out.returncode == 1
    assert "cannot reach etcd at 127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    bad = cli(["nohost"], etcd_namespace, "nodes", check=False)
    assert_one_line_error(bad, 2, "argument --endpoints", "'nohost' is not host:port")


# bad arguments: usage errors (exit 2) before anything is sent ------------------------------
RUN = ("node", "run", "--id", "n1", "--agents", "examples.agents")
USAGE_ERRORS = [
    (("quota", "set", "gpu", "-1"), ["argument LIMIT", "-1"]),
    (("quota", "set", "gpu", "abc"), ["argument LIMIT", "'abc'"]),
    (("quota", "set", "gpu", "1.5"), ["argument LIMIT", "'1.5'"]),
    (("quota", "set", "gpu", "1" + "0" * 30), ["argument LIMIT", "at most"]),
    (("quota", "set", "gpu"), ["required", "LIMIT"]),
    (("quota", "set", "g/pu", "3"), ["argument RESOURCE", "'g/pu'"]),
    (("quota", "show", "g/pu"), ["argument RESOURCE", "'g/pu'"]),
    (("quota", "show", "gpu", "3"), ["unrecognized arguments: 3"]),
    (("node", "drain", "bad/node"), ["argument NODE", "invalid node id 'bad/node'"]),
    (("node", "cordon", "bad/node"), ["argument NODE", "invalid node id 'bad/node'"]),
    (("node", "uncordon", "bad/node"), ["argument NODE", "invalid node id 'bad/node'"]),
    (("node", "drain"), ["required", "NODE"]),
    (("node", "run", "--id", "bad/id", "--agents", "examples.agents"), ["argument --id"]),
    ((*RUN, "--capacity", "cpu=-1"), ["argument --capacity", "'cpu'", "-1"]),
    ((*RUN, "--capacity", "cpu=1.5"), ["argument --capacity", "'1.5'"]),
    ((*RUN, "--capacity", "cpu"), ["argument --capacity", "NAME=INT"]),
    ((*RUN, "--capacity", "c/pu=1"), ["argument --capacity", "invalid resource 'c/pu'"]),
    ((*RUN, "--capability", "bad cap"), ["argument --capability", "'bad cap'"]),
    (("node", "run", "--id", "n1", "--agents", "no_such_module"), ["--agents", "no_such_module"]),
    (("node", "run", "--id", "n1", "--agents", "examples.nope"), ["--agents", "examples.nope"]),
    (("node", "run", "--id", "n1", "--agents", "json"), ["--agents", "no @clustered class"]),
    (("node", "run", "--id", "n1", "--agents", "a-b"), ["--agents", "'a-b'"]),
    (("--tenant", "bad/tenant", "nodes"), ["argument --tenant", "'bad/tenant'"]),
    (("audit", "list", "--since", "999999999999"), ["argument --since", "0 to 999999999998"]),
    (("audit", "list", "--since", "-1"), ["argument --since", "-1"]),
]


@pytest.mark.parametrize(
    ("args", "words"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS]
)
async def test_bad_argument_is_a_usage_error_and_sends_nothing(
    etcd_endpoints: list[str],
    etcd_namespace: str,
    etcd_config: Config,
    args: tuple[str, ...],
    words: list[str],
) -> None:
    before = await store_revision(etcd_config)
    if "json" in args:  # "no @clustered class" needs a process that imported none
        out = await anyio.to_thread.run_sync(
            lambda: cli(etcd_endpoints, etcd_namespace, *args, check=False, timeout=20)
        )
    else:
        out = await anyio.to_thread.run_sync(
            lambda: cli_in_process(etcd_endpoints, etcd_namespace, *args)
        )
    assert_one_line_error(out, 2, *words)
    assert "usage: foundation-etcd" in out.stderr
    assert await store_revision(etcd_config) == before  # no node key, no lease, no write


async def test_bad_namespace_is_a_usage_error(
    etcd_endpoints: list[str], etcd_config: Config
) -> None:
    before = await store_revision(etcd_config)
    out = await anyio.to_thread.run_sync(
        lambda: cli(etcd_endpoints, "bad/ns", "nodes", check=False, timeout=20)
    )
    assert_one_line_error(out, 2, "argument --namespace", "'bad/ns'")
    assert await store_revision(etcd_config) == before


async def test_agents_module_in_the_current_directory_only_suggests_pythonpath(
    etcd_endpoints: list[str], etcd_namespace: str, etcd_config: Config, tmp_path: Path
) -> None:
    (tmp_path / "localagents.py").write_text("VALUE = 1\n")
    before = await store_revision(etcd_config)
    # -P: the current directory is not put on the import path (as for the installed script)
    out = await anyio.to_thread.run_sync(
        lambda: cli(
            etcd_endpoints,
            etcd_namespace,
            *("node", "run", "--id", "n1", "--agents", "localagents"),
            check=False,
            cwd=tmp_path,
            python_flags=("-P",),
            pythonpath="",
            timeout=20,
        )
    )
    resolved = await anyio.Path(tmp_path).resolve()
    assert_one_line_error(out, 2, "no module named 'localagents'", f"PYTHONPATH={resolved}")
    assert await store_revision(etcd_config) == before


# runtime errors: exit 1, one line, no traceback ------------------------------------------------
@pytest.mark.once
async def test_runtime_errors_are_one_line(
    etcd_endpoints: list[str], etcd_namespace: str, tmp_path: Path
) -> None:
    def run(*args: str, **kw: object):
        return cli(etcd_endpoints, etcd_namespace, *args, check=False, timeout=30, **kw)

    out = await anyio.to_thread.run_sync(run, "quota", "show", "gpu")
    assert_one_line_error(out, 1, "no quota limit is set for resource 'gpu'")
    assert "limit None" not in out.stdout
    cfg = Config(endpoints=tuple(etcd_endpoints), namespace=etcd_namespace)
    async with open_transport(cfg) as t:  # another client stores a limit of -5
        await t.put(cfg.keyspace.quota_limit("neg"), b"-5")
    out = await anyio.to_thread.run_sync(run, "quota", "show", "neg")
    assert_one_line_error(out, 1, "the stored quota limit of resource 'neg' is malformed")
    for command in ("drain", "cordon", "uncordon"):
        out = await anyio.to_thread.run_sync(run, "node", command, "ghost")
        assert_one_line_error(out, 1, "node 'ghost' is unknown")
    auth = {"FOUNDATION_ETCD_USER": "nobody", "FOUNDATION_ETCD_PASSWORD": "wrong"}
    out = await anyio.to_thread.run_sync(lambda: run("nodes", env=auth))
    assert_one_line_error(out, 1, "authenticate")
    (tmp_path / "brokenagents.py").write_text("raise RuntimeError('boom at import')\n")
    out = await anyio.to_thread.run_sync(
        lambda: run(
            *("node", "run", "--id", "n1", "--agents", "brokenagents"),
            pythonpath=f"{ROOT}{os.pathsep}{tmp_path}",
        )
    )
    assert_one_line_error(
        out, 1, "importing 'brokenagents' failed: RuntimeError: boom at import", "brokenagents.py:1"
    )


# cordon and uncordon ------------------------------------------------------------------------
@pytest.mark.once
async def test_cordon_and_uncordon(
    etcd_endpoints: list[str], etcd_namespace: str, etcd_config: Config
) -> None:
    from examples.agents import Counter

    def run(*args: str):
        return cli(etcd_endpoints, etcd_namespace, *args, timeout=30)

    async with (
        connect(etcd_config, node_id="ca", capacity={"cpu": 4}) as ca,
        connect(etcd_config, node_id="cb", capacity={"cpu": 4}),
    ):
        out = await anyio.to_thread.run_sync(run, "node", "cordon", "ca")
        assert "node ca cordoned" in out.stdout
        out = await anyio.to_thread.run_sync(run, "node", "cordon", "ca")
        assert "node ca was already cordoned" in out.stdout
        nodes = await anyio.to_thread.run_sync(run, "nodes")
        rows = {line.split()[0]: line.split() for line in nodes.stdout.splitlines()[1:]}
        assert rows["ca"][2] == "yes" and rows["cb"][2] == "no", nodes.stdout
        with anyio.fail_after(10), pytest.raises(NoNodeFitsError, match="ca: cordoned"):
            await ca.spawn(Counter, "pinned", placement="pinned:ca")
        out = await anyio.to_thread.run_sync(run, "node", "uncordon", "ca")
        assert "node ca uncordoned" in out.stdout
        out = await anyio.to_thread.run_sync(run, "node", "uncordon", "ca")
        assert "node ca was not cordoned" in out.stdout
        with anyio.fail_after(10):
            assert (await ca.spawn(Counter, "pinned", placement="pinned:ca")).node_id == "ca"


# signals, calls and tools ----------------------------------------------------------------------
SIGNAL_USAGE_ERRORS = [
    (("signals",), ["required", "inbox,dead,redrive,send"]),
    (("signals", "send", "a1"), ["required", "TYPE"]),
    (("signals", "send", "a/1", "count"), ["argument AGENT", "invalid agent id 'a/1'"]),
    (("signals", "send", "a1", "bad type!"), ["argument TYPE", "'bad type!'"]),
    (("signals", "send", "a1", "count", "--data", "{x"), ["argument --data", "not JSON"]),
    (("signals", "send", "a1", "count", "--data", "NaN"), ["argument --data", "NaN is not JSON"]),
    (("signals", "send", "a1", "count", "--data", "[1e999]"), ["argument --data", "out of range"]),
    (("call", "a1", "add", "--args", '{"a": -1e999}'), ["argument --args", "out of range"]),
    (("signals", "send", "a1", "count", "--id", "bad id"), ["argument --id", "'bad id'"]),
    (
        ("signals", "send", "a1", "count", "--data", '"' + "x" * 70_000 + '"'),
        ["argument --data", "over signal_max_bytes (65536)"],
    ),
    (("signals", "inbox", "a1", "--limit", "0"), ["argument --limit", "'0'"]),
    (("signals", "inbox", "a1", "--limit", "ten"), ["argument --limit", "'ten'"]),
    (("signals", "inbox"), ["required", "AGENT"]),
    (("signals", "dead", "a/1"), ["argument AGENT", "'a/1'"]),
    (("signals", "redrive", "a1"), ["required", "ID"]),
    (("signals", "redrive", "a1", "bad/id"), ["argument ID", "invalid signal id 'bad/id'"]),
    (("call", "a1"), ["required", "ACTION"]),
    (("call", "a1", "bad action"), ["argument ACTION", "invalid action 'bad action'"]),
    (("call", "a1", "add", "--args", "[1]"), ["argument --args", "must be a JSON object"]),
    (("call", "a1", "add", "--args", "{"), ["argument --args", "not JSON"]),
    (("call", "a1", "add", "--timeout", "0"), ["argument --timeout", "'0'"]),
    (("call", "a1", "add", "--timeout", "nan"), ["argument --timeout", "'nan'"]),
    (("call", "a1", "add", "--timeout", "-1"), ["argument --timeout", "'-1'"]),
    (("call", "a1", "add", "--id", "x/y"), ["argument --id", "invalid call id 'x/y'"]),
    (
        ("call", "a1", "add", "--args", '{"s": "' + "x" * 70_000 + '"}'),
        ["argument --args", "over signal_max_bytes"],
    ),
    (("tools", "extra"), ["unrecognized arguments: extra"]),
]


@pytest.mark.parametrize(
    ("args", "words"),
    SIGNAL_USAGE_ERRORS,
    ids=[" ".join(a)[:60] for a, _ in SIGNAL_USAGE_ERRORS],
)
async def test_bad_signal_argument_is_a_usage_error_and_sends_nothing(
    etcd_endpoints: list[str],
    etcd_namespace: str,
    etcd_config: Config,
    args: tuple[str, ...],
    words: list[str],
) -> None:
    before = await store_revision(etcd_config)
    out = await anyio.to_thread.run_sync(
        lambda: cli_in_process(etcd_endpoints, etcd_namespace, *args)
    )
    assert_one_line_error(out, 2, *words)
    assert "usage: foundation-etcd" in out.stderr
    assert await store_revision(etcd_config) == before  # no node key, no lease, no write


def test_cli_signal_type_rule_is_the_library_rule() -> None:
    import argparse

    from foundation_etcd._core.signals import validate_type
    from foundation_etcd.cli_signals import _signal_type

    samples = ["count", "a.b:c/d-e_f", "x" * 256, "x" * 257, "", "bad type", "é", "a\n", "*"]
    for sample in samples:
        try:
            validate_type(sample)
            library = True
        except fe.InvalidIdError:
            library = False
        try:
            _signal_type(sample)
            ours = True
        except argparse.ArgumentTypeError:
            ours = False
        assert ours == library, sample


@pytest.mark.once
async def test_signals_send_inbox_call_tools_dead_letters_redrive(
    etcd_endpoints: list[str], etcd_namespace: str, etcd_config: Config
) -> None:
    from examples.signals import Tally

    def run(*args: str, check: bool = True, **env: str):
        if env:  # settings from the environment: a process of its own
            return cli(etcd_endpoints, etcd_namespace, *args, check=check, timeout=30, env=env)
        out = cli_in_process(etcd_endpoints, etcd_namespace, *args)
        assert not check or out.returncode == 0, out.stderr
        return out

    async def run_async(*args: str, check: bool = True, **env: str):
        return await anyio.to_thread.run_sync(lambda: run(*args, check=check, **env))

    cfg = etcd_config.with_options(signal_max_attempts=2)
    async with (
        connect(cfg, node_id="sig-host") as host,
        connect(cfg, node_id="sig-idle"),  # hosts t2 but never serves: its signals wait
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(host.serve)
        await host.spawn(Tally, "t1", placement="pinned:sig-host")
        await host.spawn(Tally, "t2", placement="pinned:sig-idle")
        with anyio.fail_after(60):
            out = await run_async(
                "signals", "send", "t1", "count", "--data", '{"n": 2}', "--id", "s1"
            )
            assert out.stdout.strip().startswith("signal s1 sent to t1 (revision ")
            out = await run_async(
                "signals", "send", "t1", "count", "--data", '{"n": 2}', "--id", "s1"
            )
            assert "signal s1 to t1: duplicate" in out.stdout and "nothing sent" in out.stdout
            out = await run_async("signals", "send", "t1", "count", "--data", '{"n": 1}')
            generated = out.stdout.split()[1]
            assert len(generated) == 32 and "sent to t1" in out.stdout

            # an action's result, as JSON; the signals before it were handled first (FIFO)
            out = await run_async("call", "t1", "add", "--args", '{"n": 3}')
            assert json.loads(out.stdout) == 6
            out = await run_async("call", "t1", "add", "--args", '{"n": "x"}', check=False)
            assert_one_line_error(out, 1, "t1.add raised TypeError")
            out = await run_async("call", "t1", "add", "--args", '{"n": 0}')
            assert json.loads(out.stdout) == 6  # the failed call kept no effect

            # the inbox of an agent nobody serves, oldest first
            for sid in ("w1", "w2"):
                await run_async("signals", "send", "t2", "count", "--data", '{"n": 1}', "--id", sid)
            out = await run_async("signals", "inbox", "t2")
            header, *rows = out.stdout.splitlines()
            assert header.split() == ["ID", "TYPE", "ATTEMPT", "AGE", "SOURCE"]
            assert [r.split()[:3] for r in rows] == [["w1", "count", "1"], ["w2", "count", "1"]]
            assert all(r.split()[4].startswith("cli-") for r in rows)
            out = await run_async("signals", "inbox", "t2", "--limit", "1")
            assert len(out.stdout.splitlines()) == 2

            # a call that gets no reply in time may still run: the message says how to wait
            out = await run_async(
                "call",
                "t2",
                "add",
                "--args",
                '{"n": 1}',
                "--id",
                "late",
                "--timeout",
                "0.5",
                check=False,
            )
            assert_one_line_error(out, 1, "call late of t2.add", "may still run", "--id late")
            assert [s.id for s in await host.inbox("t2")] == ["w1", "w2", "late"]

            # a full inbox refuses, whatever this process's window (nothing written)
            out = await run_async(
                "signals",
                "send",
                "t2",
                "count",
                "--id",
                "w3",
                check=False,
                FOUNDATION_ETCD_SIGNAL_INBOX_LIMIT="3",
            )
            assert_one_line_error(out, 1, "inbox of agent 't2' is full (3 waiting, limit 3)")
            assert len(await host.inbox("t2")) == 3

            out = await run_async("tools")
            names = {t["name"] for t in json.loads(out.stdout)}
            assert {"t1__add", "t2__add"} <= names

            # a handler that raises: retried, then a dead letter; redrive sends it again
            await run_async("signals", "send", "t1", "count", "--data", "{}", "--id", "poison")

            async def dead(n: int = 1) -> bool:
                return len(await host.dead_letters("t1")) == n

            await wait_until(dead)
            (letter,) = await host.dead_letters("t1")
            for args in (("signals", "dead"), ("signals", "dead", "t1")):
                out = await run_async(*args)
                header, *rows = out.stdout.splitlines()
                assert header.split() == ["AGENT", "ID", "TYPE", "ATTEMPTS", "WHEN", "REASON"]
                assert len(rows) == 1 and rows[0].split()[:4] == ["t1", "poison", "count", "2"]
                assert "KeyError" in rows[0]
            out = await run_async("signals", "dead", "t2")
            assert out.stdout.splitlines()[1:] == []
            out = await run_async("signals", "redrive", "t1", "poison")
            assert "dead letter poison sent again to t1" in out.stdout

            async def dead_again() -> bool:
                letters = await host.dead_letters("t1")
                return len(letters) == 1 and letters[0].revision > letter.revision

            await wait_until(dead_again)
            out = await run_async("signals", "redrive", "t1", "nope", check=False)
            assert_one_line_error(out, 1, "no dead letter 'nope' for agent 't1'")
            # a dead letter whose agent is not spawned, and one to a full inbox (crafted)
            value = (await host.transport.get(host.keyspace.dead_letter("t1", "poison"))).value
            for agent in ("ghost", "t2"):
                await host.transport.put(host.keyspace.dead_letter(agent, "poison"), value)
            out = await run_async("signals", "redrive", "ghost", "poison", check=False)
            assert_one_line_error(out, 1, "cannot redrive 'poison'", "'ghost' is not spawned")
            out = await run_async(
                "signals",
                "redrive",
                "t2",
                "poison",
                check=False,
                FOUNDATION_ETCD_SIGNAL_INBOX_LIMIT="3",
            )
            assert_one_line_error(out, 1, "inbox of agent 't2' is full", "the dead letter stays")
            assert len(await host.dead_letters("t2")) == 1

            # an agent that is not spawned: one line, exit 1 (run side by side)
            outs: dict[tuple[str, ...], subprocess.CompletedProcess] = {}

            async def record(*args: str) -> None:  # side by side: real processes
                outs[args] = await anyio.to_thread.run_sync(
                    lambda: cli(etcd_endpoints, etcd_namespace, *args, check=False, timeout=30)
                )

            async with anyio.create_task_group() as runs:
                for args in (
                    ("signals", "inbox", "ghost"),
                    ("signals", "dead", "ghost"),
                    ("signals", "redrive", "ghost2", "x"),
                    ("signals", "send", "ghost", "count"),
                    ("call", "ghost", "add"),
                ):
                    runs.start_soon(lambda a=args: record(*a))
            for out in outs.values():
                assert_one_line_error(out, 1, "'ghost")
                assert "spawned" in out.stderr
        tg.cancel_scope.cancel()


@pytest.mark.once
async def test_signal_usage_examples_in_docs_print_what_they_show(
    etcd_endpoints: list[str], etcd_namespace: str
) -> None:
    """The ``console`` block of docs/cli.md: each command prints exactly the lines shown."""
    import re
    import shlex

    page = (ROOT / "docs" / "cli.md").read_text()
    (block,) = re.findall(r"^```console\n(.*?)^```$", page, re.MULTILINE | re.DOTALL)
    examples = re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]
    assert len(examples) == 3
    for example in examples:
        command, _, shown = example.partition("\n")
        words = shlex.split(command)
        assert words[0] == "foundation-etcd"
        out = await anyio.to_thread.run_sync(
            lambda w=words: cli(
                etcd_endpoints, etcd_namespace, *w[1:], check=False, env={"COLUMNS": "80"}
            )
        )
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr == shown, (out.stderr, shown)


def test_a_listing_into_a_closed_pipe_ends_quietly(
    etcd_endpoints: list[str], etcd_namespace: str
) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: like `| head -0`
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "foundation_etcd.cli",
                "--endpoints",
                ",".join(etcd_endpoints),
                "--namespace",
                etcd_namespace,
                "nodes",
            ],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        )
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def watching_nodes(endpoints: str, namespace: str) -> subprocess.Popen[str]:
    """``nodes -w`` in a process of its own, its output on pipes."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "foundation_etcd.cli", "--endpoints", endpoints),
            *("--namespace", namespace, "nodes", "-w"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONWARNINGS="ignore"),
    )


def test_a_watch_whose_reader_leaves_ends_while_nothing_changes(
    etcd_endpoints: list[str], etcd_namespace: str
) -> None:
    """`nodes -w | head -1`: the first listing is read, then the reader goes; no change
    follows, so nothing is written that could fail: the watch must notice by itself."""
    proc = watching_nodes(",".join(etcd_endpoints), etcd_namespace)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("# revision")
        proc.stdout.close()  # the reader leaves
        assert proc.wait(15) == 141
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]


def test_a_watch_whose_etcd_pauses_ends_with_one_line_naming_it(
    etcd_factory: Any, etcd_namespace: str
) -> None:
    """A SIGSTOPped member keeps its connection open and answers nothing: `-w` says so."""
    server = etcd_factory()
    proc = watching_nodes(server.endpoint, etcd_namespace)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("# revision")
        server.pause()
        assert proc.wait(30) == 1
        err = proc.stderr.read()  # type: ignore[union-attr]
        lines = [line for line in err.splitlines() if line.startswith("foundation-etcd:")]
        assert len(lines) == 1 and f"etcd at {server.endpoint} stopped answering" in lines[0]
        assert "Traceback" not in err, err
    finally:
        server.resume()
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_ctrl_c_while_the_command_line_loads_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C in the second the command takes to load ends it as one during its run.

    The interrupt is made to arrive while the entry point imports the command line (an
    import hook raises it there), not timed against a real load: on a loaded machine a
    signal sent after a delay may land before or after that window.
    """
    import importlib.abc

    from foundation_etcd import _entry

    class Interrupted(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
            if name == "foundation_etcd.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "foundation_etcd.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    assert _entry.main() == 130
    monkeypatch.undo()  # the command line imports again
    # and the console script runs the command line through that entry point
    script = Path(sys.executable).parent / "foundation-etcd"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("foundation-etcd "), out
    assert "foundation_etcd._entry" in script.read_text()
