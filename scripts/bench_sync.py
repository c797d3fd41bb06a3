"""Benchmark of the sync facade against the async API and python3-etcd3 (issue 15).

Usage::

    .venv/bin/python scripts/bench_sync.py [--ops 200] [--rounds 5] [--endpoint H:P]

Measures, in alternating rounds of one run against one etcd member (embedded unless
``--endpoint`` is given):

* lock acquire+release: ``await cluster.lock(n).acquire()`` (async), ``with
  cluster.lock(n).acquire():`` through ``foundation_etcd.sync``, and python3-etcd3's
  ``Lock`` in its own process and venv (``scripts/bench_sync_peer.py``; the venv is made
  once under ``/tmp/foundation-etcd-bench-peers`` from the package registry);
* ``registry.register`` of a fresh id, async and sync.

It prints medians (p50, ms) and the ratios sync/async and sync/python3-etcd3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

import foundation_etcd as fe
from foundation_etcd.testing import EtcdServer

PEER_ROOT = Path("/tmp/foundation-etcd-bench-peers")
PEER_REQUIREMENT = "python3-etcd3==0.13.0"
WARM_UP = 20


def peer_python(requirement: str = PEER_REQUIREMENT) -> Path | None:
    """A venv with ``requirement`` (python3-etcd3 by default), installed ``--no-deps``.

    It sees this interpreter's grpcio and protobuf behind its own site-packages.
    """
    venv = PEER_ROOT / requirement.partition("==")[0]
    python = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return python
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True
        )
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in ours)
        (Path(purelib) / "_bench_parent.pth").write_text(lines)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", requirement],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"{requirement} not installable: {exc}", file=sys.stderr)
        return None
    (venv / ".installed").touch()
    return python


def standalone_python(name: str, requirements: Sequence[str]) -> Path | None:
    """A venv of its own with ``requirements`` and their dependencies (nothing of ours).

    For peers whose dependencies would clash with this environment (tooz pulls oslo.*).
    Made once under ``PEER_ROOT``; ``None`` (and a message) when pip cannot install them.
    """
    venv = PEER_ROOT / name
    python = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"{' '.join(requirements)} not installable: {exc}", file=sys.stderr)
        return None
    (venv / ".installed").touch()
    return python


def timed(fn: Callable[[], None], ops: int) -> list[float]:
    """Wall times of ``ops`` calls of ``fn`` after untimed warm-up calls."""
    for _ in range(WARM_UP):
        fn()
    out = []
    for _ in range(ops):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


async def async_round(cfg: fe.Config, ops: int) -> dict[str, list[float]]:
    """One round of the async API: lock cycles, then registrations."""
    async with fe.connect(cfg, node_id=f"bench-async-{uuid.uuid4().hex[:6]}") as c:
        lock = c.lock("bench-sync-async")
        samples: dict[str, list[float]] = {"lock": [], "register": []}
        for i in range(WARM_UP + ops):
            t0 = time.perf_counter()
            async with lock.acquire():
                pass
            if i >= WARM_UP:
                samples["lock"].append(time.perf_counter() - t0)
        for i in range(WARM_UP + ops):
            agent = f"a-{uuid.uuid4().hex[:12]}"
            t0 = time.perf_counter()
            await c.registry.register(agent)
            if i >= WARM_UP:
                samples["register"].append(time.perf_counter() - t0)
            await c.registry.unregister(agent)
        return samples


def sync_round(cfg: fe.Config, ops: int) -> dict[str, list[float]]:
    """One round through ``foundation_etcd.sync``: lock cycles, then registrations."""
    with fe.sync.connect(cfg, node_id=f"bench-sync-{uuid.uuid4().hex[:6]}") as c:
        lock = c.lock("bench-sync-sync")

        def cycle() -> None:
            with lock.acquire():
                pass

        samples = {"lock": timed(cycle, ops), "register": []}
        for i in range(WARM_UP + ops):
            agent = f"s-{uuid.uuid4().hex[:12]}"
            t0 = time.perf_counter()
            c.registry.register(agent)
            if i >= WARM_UP:
                samples["register"].append(time.perf_counter() - t0)
            c.registry.unregister(agent)
        return samples


def peer_round(python: Path, endpoint: str, ops: int) -> list[float]:
    """One round of python3-etcd3's lock in its own process."""
    script = Path(__file__).with_name("bench_sync_peer.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONPATH")}
    out = subprocess.run(
        [str(python), str(script), endpoint, str(ops)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    ).stdout
    samples: list[float] = json.loads(out.strip().splitlines()[-1])["lock"]
    return samples


def ms(samples: list[float]) -> float:
    """The median in milliseconds."""
    return statistics.median(samples) * 1000


def run(endpoint: str, ops: int, rounds: int) -> None:
    """Alternate the sides for ``rounds`` rounds and print the medians and ratios."""
    cfg = fe.Config(endpoints=(endpoint,), namespace="bench-sync")
    python = peer_python()
    got: dict[str, list[float]] = {k: [] for k in ("al", "ar", "sl", "sr", "pl")}
    for r in range(rounds):
        order = ["async", "sync", "peer"] if r % 2 == 0 else ["peer", "sync", "async"]
        for side in order:
            if side == "async":
                a = anyio.run(async_round, cfg, ops)
                got["al"] += a["lock"]
                got["ar"] += a["register"]
            elif side == "sync":
                s = sync_round(cfg, ops)
                got["sl"] += s["lock"]
                got["sr"] += s["register"]
            elif python is not None:
                got["pl"] += peer_round(python, endpoint, ops)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    print(
        "| operation | async p50 ms | sync p50 ms | sync / async | python3-etcd3 p50 ms |"
        " sync / python3-etcd3 | n (each) |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    peer = f"{ms(got['pl']):.3f}" if got["pl"] else "not installed"
    peer_ratio = f"{ms(got['sl']) / ms(got['pl']):.2f}x" if got["pl"] else "-"
    print(
        f"| lock acquire+release | {ms(got['al']):.3f} | {ms(got['sl']):.3f} | "
        f"{ms(got['sl']) / ms(got['al']):.2f}x | {peer} | {peer_ratio} | {len(got['sl'])} |"
    )
    print(
        f"| register (fresh id) | {ms(got['ar']):.3f} | {ms(got['sr']):.3f} | "
        f"{ms(got['sr']) / ms(got['ar']):.2f}x | - | - | {len(got['sr'])} |"
    )


def main() -> None:
    """Parse arguments, start etcd unless given one, run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--endpoint")
    args = parser.parse_args()
    if args.endpoint:
        run(args.endpoint, args.ops, args.rounds)
        return
    with EtcdServer("bench-sync") as server:
        run(server.endpoint, args.ops, args.rounds)


if __name__ == "__main__":
    main()
