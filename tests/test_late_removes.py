"""Removals of a name that are applied late delete nothing of a later setting of that name.

A removal that got no answer (sent to a member that was paused, say) can be applied when
that member comes back, after the name was removed by someone else and set again. A plain
delete of the name would then lift the later cordon or barrier: a node taken out of
placement takes agents again, a closed gate opens. Each removal is compared on the create
revision of the setting it read, which a new setting never has.
"""

from __future__ import annotations

import pytest

from foundation_etcd import AmbiguousResultError, Barrier, Config, connect, open_session
from foundation_etcd._agents.drain import Drain
from foundation_etcd.lowlevel import open_transport
from test_ownership_edges import ReleaseHeld  # tests/ is on sys.path

pytestmark = pytest.mark.etcd


async def test_a_barrier_removal_applied_late_leaves_the_later_setting(
    etcd_config: Config,
) -> None:
    async with open_transport(etcd_config) as t, open_session(t) as other:
        lossy = ReleaseHeld(t)
        async with open_session(lossy) as session:  # type: ignore[arg-type]
            gate, theirs = Barrier(session, "late"), Barrier(other, "late")
            assert await gate.set()
            lossy.armed = 1  # the removal gets no answer, and is held back
            with pytest.raises(AmbiguousResultError):
                await gate.remove()
            assert lossy.held is not None
            assert await theirs.remove()  # the first setting, removed by another process
            assert await theirs.set()  # and a new one
            later = await t.get(gate.key)
            assert later is not None
            await lossy.apply_held()  # the old removal lands now
            kv = await t.get(gate.key)
            assert kv is not None and kv.create_revision == later.create_revision
            assert await theirs.is_set()
            assert await gate.remove() is True  # the current setting is removed as before
            assert await gate.remove() is False


async def test_an_uncordon_applied_late_leaves_the_later_cordon(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="a") as a, open_transport(etcd_config) as t:
        lossy = ReleaseHeld(t)
        async with open_session(lossy) as session:  # type: ignore[arg-type]
            operator = Drain(session, a.keyspace, "operator", scheduler=a.scheduler)
            key = a.scheduler.cordon_key("a")
            assert await a.cordon("a")
            lossy.armed = 1  # the uncordon gets no answer, and is held back
            with pytest.raises(AmbiguousResultError):
                await operator.uncordon("a")
            assert lossy.held is not None
            assert await a.uncordon("a")  # the cordon is lifted by another operator
            assert await a.cordon("a")  # and set again
            later = await t.get(key)
            assert later is not None
            await lossy.apply_held()  # the old uncordon lands now
            kv = await t.get(key)
            assert kv is not None and kv.create_revision == later.create_revision
            assert await a.cordoned() == frozenset({"a"})
            assert await operator.uncordon("a") is True
            assert await operator.uncordon("a") is False
