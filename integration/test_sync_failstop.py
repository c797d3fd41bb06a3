"""A sync body under a lock, a leadership or a reservation learns of a lost lease at once.

The client is cut off (the fault proxy drops everything): the session steps down at its
safe deadline, before etcd can expire the lease, and a rival takes the name once etcd has.
The async side's cleanup (a resign etcd never answers) runs up to ``request_timeout``
longer; the sync body must not be told "still held" meanwhile (``fe.sync.checkpoint()``,
``held.lost``), or it would run on while the rival holds the name.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from typing import Any

import pytest

import foundation_etcd as fe
from foundation_etcd import Config

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(120)]


def enter(c: Any, kind: str, who: bytes) -> AbstractContextManager[Any]:
    if kind == "lock":
        return c.lock("L").acquire(who)  # type: ignore[no-any-return]
    if kind == "campaign":
        return c.election("E").campaign(who)  # type: ignore[no-any-return]
    return c.quotas.reserve({"slot": 1})  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["lock", "campaign", "reserve"])
def test_a_sync_body_learns_of_the_loss_before_a_rival_holds_it(
    etcd_factory: Any, fault_proxy_factory: Any, etcd_namespace: str, kind: str
) -> None:
    server = etcd_factory()
    proxy = fault_proxy_factory(server.endpoint)
    base: dict[str, Any] = {"namespace": etcd_namespace, "ttl": 3.0}  # request_timeout 5 s
    victim_cfg = Config(endpoints=(proxy.endpoint,), **base)
    rival_cfg = Config(endpoints=(server.endpoint,), **base)
    rival_at: list[float] = []
    with (
        fe.sync.connect(rival_cfg, node_id="rival", hosts_agents=False) as rival,
        fe.sync.connect(victim_cfg, node_id="victim", hosts_agents=False) as victim,
    ):
        if kind == "reserve":
            rival.quotas.set_limit("slot", 1)

        def take() -> None:
            with enter(rival, kind, b"rival"):
                rival_at.append(time.monotonic())

        told_at = None
        last_ok = cut = 0.0
        thread = threading.Thread(target=take, daemon=True)
        with pytest.raises(fe.FoundationEtcdError):
            with enter(victim, kind, b"victim") as held:
                thread.start()
                time.sleep(0.3)  # the rival waits behind the victim
                proxy.blackhole()
                cut = time.monotonic()
                while time.monotonic() - cut < 20:
                    try:
                        fe.sync.checkpoint()
                    except fe.FoundationEtcdError:
                        told_at = time.monotonic()
                        raise
                    if getattr(held, "lost", False):
                        told_at = time.monotonic()
                        break
                    last_ok = time.monotonic()
                    time.sleep(0.01)
        proxy.pass_()
        thread.join(30)
    assert told_at is not None and rival_at, (told_at, rival_at)
    assert last_ok < rival_at[0], "the sync body was told 'still held' while the rival held it"
    # told by the safe deadline (ttl - step_down after the last keepalive), not later
    assert told_at - cut < victim_cfg.ttl - victim_cfg.safe_step_down + 0.5, told_at - cut
