"""Coordination metrics on the OpenTelemetry API: no-op until the application installs an SDK.

The library depends on ``opentelemetry-api`` only. Instruments come from
``opentelemetry.metrics.get_meter("foundation_etcd", version)`` and are created on first
use, never at import; until the application sets a meter provider (an SDK with a reader or
exporter), every call here is a no-op of the API's proxy instruments, and once it does, the
proxies already created forward to it. Nothing here creates or sets a global provider.

Every instrument is named ``foundation_etcd.*`` with a unit; attributes are limited to
``tenant``, ``node``, ``name`` (an election, lock or resource pool) and ``kind``
(``lock`` or ``election``): never agent, signal, lease or reservation ids, whose number has
no bound. docs/operations.md ("Metrics") lists the instruments and what to alert on.

Tests inject a provider with :func:`use_provider` (the global one can be set only once per
process); it drops the cached instruments so that the next use creates them anew.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from opentelemetry import metrics as _otel
from opentelemetry.metrics import Counter, Histogram, MeterProvider

__all__ = [
    "Instruments",
    "agent_event",
    "agents_failed_over",
    "instruments",
    "keepalive",
    "lease_renewed",
    "now",
    "ownership_acquired",
    "ownership_fenced_refused",
    "ownership_lost",
    "quota_admitted",
    "session_lost",
    "signal_dead_lettered",
    "signal_handled",
    "signal_sent",
    "use_provider",
    "watch_relist",
    "watch_restart",
]

Attrs = dict[str, str]

# bucket boundaries, seconds: keepalive round trips are milliseconds, waits up to minutes
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_DEPTH = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
_MARGIN = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Instruments:
    """The library's instruments, created together from one meter."""

    keepalive_duration: Histogram
    deadline_margin: Histogram
    sessions_lost: Counter
    leases_renewed: Counter
    watch_restarts: Counter
    watch_relists: Counter
    ownership_acquired: Counter
    ownership_lost: Counter
    fenced_refused: Counter
    ownership_wait: Histogram
    quota_reservations: Counter
    quota_wait: Histogram
    agents_started: Counter
    agents_crashed: Counter
    agents_failed_over: Counter
    signals_sent: Counter
    signals_delivered: Counter
    signals_redelivered: Counter
    signals_dead_lettered: Counter
    signal_latency: Histogram
    inbox_depth: Histogram


_provider: MeterProvider | None = None
_cached: Instruments | None = None


def use_provider(provider: MeterProvider | None) -> None:
    """Take instruments from ``provider`` instead of the global one (``None``: back to it).

    For tests: the global provider can be set once per process. Drops the cached instruments.
    """
    global _provider, _cached
    _provider, _cached = provider, None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("foundation-etcd")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "0"


def _create() -> Instruments:
    meter = (_provider or _otel.get_meter_provider()).get_meter("foundation_etcd", _version())
    c, h = meter.create_counter, meter.create_histogram

    def hist(name: str, desc: str, bounds: tuple[float, ...]) -> Histogram:
        return h(name, "s", desc, explicit_bucket_boundaries_advisory=list(bounds))

    return Instruments(
        keepalive_duration=hist(
            "foundation_etcd.session.keepalive.duration", "keepalive round trip", _FAST
        ),
        deadline_margin=hist(
            "foundation_etcd.session.deadline.margin",
            "time left before the safe deadline when a keepalive answer arrived",
            _MARGIN,
        ),
        sessions_lost=c("foundation_etcd.session.lost", "{lease}", "session leases lost"),
        leases_renewed=c(
            "foundation_etcd.session.renewed", "{lease}", "replacement leases granted after a loss"
        ),
        watch_restarts=c("foundation_etcd.watch.restarts", "{restart}", "broken watch streams"),
        watch_relists=c("foundation_etcd.watch.relists", "{relist}", "re-lists after compaction"),
        ownership_acquired=c(
            "foundation_etcd.ownership.acquired", "{ownership}", "locks and leaderships taken"
        ),
        ownership_lost=c(
            "foundation_etcd.ownership.lost", "{ownership}", "ownerships ended while held"
        ),
        fenced_refused=c(
            "foundation_etcd.ownership.fenced_refused", "{write}", "fenced writes refused by etcd"
        ),
        ownership_wait=hist(
            "foundation_etcd.ownership.wait", "wait for a lock or leadership", _SLOW
        ),
        quota_reservations=c(
            "foundation_etcd.quota.reservations", "{reservation}", "reservations admitted"
        ),
        quota_wait=hist(
            "foundation_etcd.quota.wait", "wait until a reservation is admitted", _SLOW
        ),
        agents_started=c("foundation_etcd.agents.started", "{agent}", "agent incarnations started"),
        agents_crashed=c("foundation_etcd.agents.crashed", "{agent}", "agent runs that raised"),
        agents_failed_over=c(
            "foundation_etcd.agents.failed_over", "{agent}", "critical agents moved off dead nodes"
        ),
        signals_sent=c("foundation_etcd.signals.sent", "{signal}", "signals put in an inbox"),
        signals_delivered=c(
            "foundation_etcd.signals.delivered", "{signal}", "signals handled and committed"
        ),
        signals_redelivered=c(
            "foundation_etcd.signals.redelivered",
            "{signal}",
            "handled on a later attempt",
        ),
        signals_dead_lettered=c(
            "foundation_etcd.signals.dead_lettered", "{signal}", "signals moved to dead letters"
        ),
        signal_latency=hist(
            "foundation_etcd.signals.latency",
            "from the send (the sender's clock) to the committed handling",
            _SLOW,
        ),
        inbox_depth=h(
            "foundation_etcd.signals.inbox_depth",
            "{signal}",
            "signals waiting in a hosted agent's inbox as it takes the next",
            explicit_bucket_boundaries_advisory=list(_DEPTH),
        ),
    )


def instruments() -> Instruments:
    """The instruments, created on first use."""
    global _cached
    if _cached is None:
        _cached = _create()
    return _cached


@lru_cache(maxsize=1024)
def _attrs(tenant: str, node: str = "", name: str = "", kind: str = "") -> Attrs:
    """One shared (do not mutate) attribute dict per combination; empty ones are left out."""
    pairs = (("tenant", tenant), ("node", node), ("name", name), ("kind", kind))
    return {k: v for k, v in pairs if v}


def now() -> float:
    """A monotonic clock reading, for the waits measured here."""
    return time.monotonic()


# sessions ----------------------------------------------------------------------------------
def keepalive(tenant: str, rtt: float, margin: float) -> None:
    """An answered keepalive: its round trip and the time it left before the deadline."""
    ins, attrs = instruments(), _attrs(tenant)
    ins.keepalive_duration.record(rtt, attrs)
    ins.deadline_margin.record(max(margin, 0.0), attrs)


def session_lost(tenant: str) -> None:
    """A session's lease was lost."""
    instruments().sessions_lost.add(1, _attrs(tenant))


def lease_renewed(tenant: str) -> None:
    """A replacement lease was granted after a loss."""
    instruments().leases_renewed.add(1, _attrs(tenant))


# watches -----------------------------------------------------------------------------------
def watch_restart(tenant: str) -> None:
    """A watched view's stream broke and is resumed."""
    instruments().watch_restarts.add(1, _attrs(tenant))


def watch_relist(tenant: str) -> None:
    """A watched view listed its prefix again (its resume revision was compacted)."""
    instruments().watch_relists.add(1, _attrs(tenant))


# ownership ---------------------------------------------------------------------------------
def ownership_acquired(kind: str, name: str, tenant: str, since: float) -> Attrs:
    """A lock or leadership was taken after waiting since ``since``; return its attributes."""
    ins, attrs = instruments(), _attrs(tenant, name=name, kind=kind)
    ins.ownership_acquired.add(1, attrs)
    ins.ownership_wait.record(time.monotonic() - since, attrs)
    return attrs


def ownership_lost(attrs: Attrs) -> None:
    """An ownership ended while held (lease lost, key deleted, fenced write refused)."""
    instruments().ownership_lost.add(1, attrs)


def ownership_fenced_refused(attrs: Attrs) -> None:
    """Etcd refused a fenced write: the ownership had ended."""
    instruments().fenced_refused.add(1, attrs)


# quotas ------------------------------------------------------------------------------------
def quota_admitted(tenant: str, pools: Iterable[str], since: float) -> None:
    """A reservation of ``pools`` was admitted after waiting since ``since`` (one point each)."""
    ins, waited = instruments(), time.monotonic() - since
    for pool in pools:
        attrs = _attrs(tenant, name=pool)
        ins.quota_reservations.add(1, attrs)
        ins.quota_wait.record(waited, attrs)


# agents ------------------------------------------------------------------------------------
def agent_event(event: str, tenant: str, node: str) -> None:
    """A node runtime event: ``started`` and ``crashed`` are counted, the others not."""
    if event == "started":
        instruments().agents_started.add(1, _attrs(tenant, node))
    elif event == "crashed":
        instruments().agents_crashed.add(1, _attrs(tenant, node))


def agents_failed_over(tenant: str, node: str) -> None:
    """The failover leader on ``node`` moved a critical agent off a dead node."""
    instruments().agents_failed_over.add(1, _attrs(tenant, node))


# signals -----------------------------------------------------------------------------------
def signal_sent(tenant: str, count: int = 1) -> None:
    """Signals newly put in inboxes (duplicates are not counted)."""
    instruments().signals_sent.add(count, _attrs(tenant))


def signal_handled(tenant: str, node: str, attempt: int, sent_at: float) -> None:
    """A signal's handling committed on ``attempt``; it was sent at ``sent_at`` (epoch s)."""
    ins, attrs = instruments(), _attrs(tenant, node)
    ins.signals_delivered.add(1, attrs)
    if attempt > 1:
        ins.signals_redelivered.add(1, attrs)
    if sent_at > 0:
        ins.signal_latency.record(max(time.time() - sent_at, 0.0), attrs)


def signal_dead_lettered(tenant: str, node: str) -> None:
    """A signal went to dead letters."""
    instruments().signals_dead_lettered.add(1, _attrs(tenant, node))


def inbox_depth(tenant: str, node: str, depth: int) -> None:
    """The signals waiting in a hosted agent's inbox as it takes the next one."""
    instruments().inbox_depth.record(depth, _attrs(tenant, node))
