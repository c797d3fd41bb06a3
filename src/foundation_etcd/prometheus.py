"""The library's metrics in Prometheus' exposition format, for users without an OTel pipeline.

::

    pip install 'foundation-etcd[prometheus]'

    from opentelemetry import metrics
    from prometheus_client import CollectorRegistry, start_http_server
    import foundation_etcd.prometheus

    registry = CollectorRegistry()
    metrics.set_meter_provider(foundation_etcd.prometheus.expose(registry))  # once
    start_http_server(9464, registry=registry)

:func:`expose` builds an OpenTelemetry SDK ``MeterProvider`` whose only reader is an
in-memory one, and registers on the **registry the caller gives** (never the global
``prometheus_client.REGISTRY`` unless that is what is passed) a collector that converts
what the reader holds at each scrape. Set the provider as the global one: the library takes
its instruments from it (docs/operations.md, "Metrics", lists them).

Names follow Prometheus' conventions: ``foundation_etcd.session.lost`` becomes
``foundation_etcd_session_lost_total``; a histogram in seconds becomes
``foundation_etcd_session_keepalive_duration_seconds`` with ``_bucket``, ``_sum`` and
``_count`` series. Attributes become labels. Counters and histograms are cumulative, as
Prometheus expects.

Needs ``prometheus-client`` and ``opentelemetry-sdk`` (the ``prometheus`` extra); importing
this module without them raises ``ImportError`` naming the extra.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Histogram,
        InMemoryMetricReader,
        Sum,
    )
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"foundation_etcd.prometheus needs the 'prometheus' extra "
        f"(pip install 'foundation-etcd[prometheus]'): {exc}"
    ) from exc

__all__ = ["PrometheusBridge", "expose"]

_UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def _name(name: str, unit: str) -> str:
    base = _INVALID.sub("_", name)
    suffix = _UNITS.get(unit, "")
    return f"{base}_{suffix}" if suffix and not base.endswith(suffix) else base


def _labels(attributes: Any) -> dict[str, str]:
    return {_INVALID.sub("_", str(k)): str(v) for k, v in (attributes or {}).items()}


class PrometheusBridge(Collector):
    """A ``prometheus_client`` collector over an OpenTelemetry in-memory reader.

    Args:
        reader: the reader of the ``MeterProvider`` the library records into.
    """

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self._reader = reader

    def collect(self) -> Iterator[Metric]:
        """The families of every instrument with data, read at this scrape."""
        data = self._reader.get_metrics_data()
        if data is None:
            return
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    yield from self._families(m)

    def _families(self, m: Any) -> Iterator[Metric]:
        name, doc, points = _name(m.name, m.unit or ""), m.description or m.name, m.data
        labelled = [(_labels(p.attributes), p) for p in points.data_points]
        keys = sorted({k for labels, _ in labelled for k in labels})
        if isinstance(points, Histogram):
            hist = HistogramMetricFamily(name, doc, labels=keys)
            for labels, p in labelled:
                cumulative, buckets = 0, []
                for bound, count in zip(
                    [*p.explicit_bounds, float("inf")], p.bucket_counts, strict=False
                ):
                    cumulative += count
                    buckets.append(
                        ("+Inf" if bound == float("inf") else repr(float(bound)), cumulative)
                    )
                hist.add_metric([labels.get(k, "") for k in keys], buckets, p.sum)
            yield hist
        elif isinstance(points, Sum) and points.is_monotonic:
            counter = CounterMetricFamily(name.removesuffix("_total"), doc, labels=keys)
            for labels, p in labelled:
                counter.add_metric([labels.get(k, "") for k in keys], p.value)
            yield counter
        else:  # a gauge, or an up-down sum
            gauge = GaugeMetricFamily(name, doc, labels=keys)
            for labels, p in labelled:
                gauge.add_metric([labels.get(k, "") for k in keys], p.value)
            yield gauge


def expose(registry: CollectorRegistry, **provider_options: Any) -> MeterProvider:
    """An SDK ``MeterProvider`` whose metrics ``registry`` serves; set it as the global one.

    Args:
        registry: the ``prometheus_client`` registry to register the collector on.
        provider_options: passed to ``MeterProvider`` (``resource=``, ``views=``...).

    Returns:
        The provider (cumulative temporality, one in-memory reader).
    """
    reader = InMemoryMetricReader(
        preferred_temporality={
            cls: AggregationTemporality.CUMULATIVE for cls in _instrument_classes()
        }
    )
    registry.register(PrometheusBridge(reader))
    return MeterProvider(metric_readers=[reader], **provider_options)


def _instrument_classes() -> list[type]:
    from opentelemetry.sdk.metrics import Counter, Histogram, ObservableCounter, UpDownCounter

    return [Counter, Histogram, ObservableCounter, UpDownCounter]
