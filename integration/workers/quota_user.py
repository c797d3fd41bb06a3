"""A worker process: concurrent tasks reserving random cpu and mem, reporting JSON lines.

Usage: python -m integration.workers.quota_user ENDPOINTS NAMESPACE NODE_ID SEED [TASKS] [TTL]
[LINGER]

By default the worker asks for usage first, which keeps its quota view open for good. With
``LINGER`` (seconds) it does not: its view opens when a reservation has to wait and closes
``LINGER`` seconds after the last one (``VIEW_LINGER``), so views open and close all along.

Events (one JSON object per line, each with ``event`` and wall time ``t``):

* ``ready`` once connected, with the limits it read.
* ``waiting`` when a task starts a reservation. The reservation id is chosen inside
  ``reserve`` and only known on admission, so a wait is named by ``wid``
  (``{node}:{task}:{seq}``), which the ``admitted`` event repeats.
* ``admitted`` with ``rid``, ``token`` (create revision of its keys), ``amounts``,
  ``view_rev`` (the revision of the process's quota view right after admission, no I/O in
  between) and ``status_rev`` (the store revision one round trip later).
* ``released`` after the reservation's block has exited (its keys deleted).
* ``error`` when a task fails; that task stops.
* ``stopped`` after SIGTERM: no task starts a new reservation, the ones waiting are held and
  released as usual, then the process disconnects.
"""

import json
import random
import sys
import time
import traceback
import warnings

import anyio

import foundation_etcd
from foundation_etcd import Config

from .stopping import until_sigterm

RESOURCES = ("cpu", "mem")


def say(event: str, **fields: object) -> None:
    # one write per line: a SIGKILL can cut the output between lines, never inside one
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


async def run(
    cfg: Config, node_id: str, seed: str, tasks: int, stop: anyio.Event, pin: bool
) -> int:
    admitted = 0
    async with foundation_etcd.connect(cfg, node_id=node_id) as c:
        limits: dict[str, int] = {}
        for resource in RESOURCES:
            limit = await c.quotas.get_limit(resource)
            if limit is None:
                raise RuntimeError(f"no limit set for {resource!r}")
            limits[resource] = limit
        if pin:
            await c.quotas.open_usage(RESOURCES[0])
        say("ready", node=node_id, limits=limits, lease=c.session.lease.id)

        async def user(task: int) -> None:
            nonlocal admitted
            rng = random.Random(f"{seed}:{task}")
            seq = 0
            while not stop.is_set():
                amounts = {r: rng.randint(1, limits[r]) for r in RESOURCES}
                hold = rng.uniform(0.010, 0.100)
                wid = f"{node_id}:{task}:{seq}"
                say("waiting", wid=wid, task=task, seq=seq, amounts=amounts)
                try:
                    async with c.quotas.reserve(amounts) as r:
                        view_rev = c.quotas.usage(RESOURCES[0]).revision
                        status_rev = (await c.transport.status()).revision
                        admitted += 1
                        say(
                            "admitted",
                            wid=wid,
                            rid=r.reservation_id,
                            token=r.token,
                            amounts=dict(r.amounts),
                            view_rev=view_rev,
                            status_rev=status_rev,
                        )
                        await anyio.sleep(hold)
                except Exception as exc:
                    say("error", wid=wid, error=repr(exc), trace=traceback.format_exc())
                    return
                say("released", wid=wid, rid=r.reservation_id)
                seq += 1

        async with anyio.create_task_group() as tg:
            for task in range(tasks):
                tg.start_soon(user, task)
        say("views", node=node_id, opens=c.quotas._quota_view.opens)
    return admitted


async def main() -> None:
    endpoints, namespace, node_id, seed = sys.argv[1:5]
    tasks = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    ttl = float(sys.argv[6]) if len(sys.argv) > 6 else 2.0
    linger = float(sys.argv[7]) if len(sys.argv) > 7 else None
    if linger is not None:
        from foundation_etcd._coord import quota_view

        quota_view.VIEW_LINGER = linger
    cfg = Config(endpoints=tuple(endpoints.split(",")), namespace=namespace, ttl=ttl)
    pin = linger is None
    admitted = await until_sigterm(lambda stop: run(cfg, node_id, seed, tasks, stop, pin))
    say("stopped", node=node_id, admitted=admitted)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    anyio.run(main)
