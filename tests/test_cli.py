"""The command line, run as users run it (a subprocess), against the test etcd."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

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
        assert "etcd 3." in h.stdout and "session lease" in h.stdout
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
    out = await anyio.to_thread.run_sync(
        lambda: cli(etcd_endpoints, etcd_namespace, *args, check=False, timeout=20)
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
async def test_runtime_errors_are_one_line(
    etcd_endpoints: list[str], etcd_namespace: str, tmp_path: Path
) -> None:
    def run(*args: str, **kw: object):
        return cli(etcd_endpoints, etcd_namespace, *args, check=False, timeout=30, **kw)

    out = await anyio.to_thread.run_sync(run, "quota", "show", "gpu")
    assert_one_line_error(out, 1, "no quota limit is set for resource 'gpu'")
    assert "limit None" not in out.stdout
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
