"""A process sending signals to the nemesis counters, logging each accepted one.

Usage::

    python -m integration.workers.signal_sender INDEX ENDPOINTS NAMESPACE TTL COUNT SECONDS SEED

Connects as node ``sender-INDEX`` (hosting no agents) and sends ``COUNT`` signals, paced
evenly over ``SECONDS``: signal ``j`` has the id ``s{INDEX}-{j:04d}``, goes to a random agent
``a00`` .. ``a19``, is of type ``relay`` when ``j % 5 == 2`` (its handler emits a ``count``)
and ``count`` otherwise, and carries ``{"n": 1..3}``. Each id is sent until accepted: after
an :class:`AmbiguousResultError` or :class:`EtcdUnavailableError` the same id is sent again.
On purpose, every 10th id is sent a second time at once (``j % 10 == 9``, still waiting or
handled) and every 10th (``j % 10 == 4``) re-sends the id sent 17 before (handled by then,
usually): both must come back ``duplicate``.

Events (JSON lines, ``event`` and ``t``): ``ready``; ``accepted`` (id, agent, type, n, dup,
rev, tries, resend: whether it was a deliberate re-send); ``retry`` (id, error); ``error``
(id, error) for anything else, after which the process exits; ``done`` (counts).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from typing import Any

import anyio

import foundation_etcd as fe

AGENTS = [f"a{i:02d}" for i in range(20)]


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def run(args: argparse.Namespace) -> None:
    cfg = fe.Config(
        endpoints=tuple(args.endpoints.split(",")), namespace=args.namespace, ttl=float(args.ttl)
    )
    rng = random.Random(args.seed)
    plan = [
        (
            f"s{args.index}-{j:04d}",
            rng.choice(AGENTS),
            "relay" if j % 5 == 2 else "count",
            rng.randint(1, 3),
        )
        for j in range(args.count)
    ]
    counts = {"accepted": 0, "resent": 0, "retries": 0}
    async with fe.connect(cfg, node_id=f"sender-{args.index}", hosts_agents=False) as c:
        say("ready")

        async def send(item: tuple[str, str, str, int], resend: bool) -> None:
            sid, agent, kind, n = item
            tries = 0
            while True:
                tries += 1
                try:
                    r = await c.send(agent, kind, {"n": n}, signal_id=sid)
                except (fe.AmbiguousResultError, fe.EtcdUnavailableError) as exc:
                    counts["retries"] += 1
                    say("retry", id=sid, agent=agent, error=repr(exc)[:300])
                    await anyio.sleep(0.05)
                    continue
                say(
                    "accepted",
                    id=sid,
                    agent=agent,
                    type=kind,
                    n=n,
                    dup=r.duplicate,
                    rev=r.revision,
                    tries=tries,
                    resend=resend,
                )
                counts["resent" if resend else "accepted"] += 1
                return

        start = time.monotonic()
        for j, item in enumerate(plan):
            await anyio.sleep(max(0.0, start + j * args.seconds / args.count - time.monotonic()))
            try:
                await send(item, False)
                if j % 10 == 9:
                    await send(item, True)
                if j % 10 == 4 and j >= 17:
                    await send(plan[j - 17], True)
            except Exception as exc:
                say("error", id=item[0], error=repr(exc)[:1000])
                raise
        say("done", **counts)


def main() -> None:
    parser = argparse.ArgumentParser(prog="signal_sender")
    parser.add_argument("index", type=int)
    parser.add_argument("endpoints")
    parser.add_argument("namespace")
    parser.add_argument("ttl")
    parser.add_argument("count", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("seed", type=int)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    anyio.run(run, args)


if __name__ == "__main__":
    main()
