"""
The per-node Prometheus registry.

Every node owns one :class:`Metrics` object with its own
:class:`prometheus_client.CollectorRegistry` (never the global default registry, so
several nodes can live in one test process).  Names get the ``tunmesh_``
prefix, and every exposed sample carries the configured ``base_labels``; those
constant labels are added at collect time by a wrapper collector, so the
collectors themselves stay cheap and label-free.

The node's random per-process id is **not** a label of every series (issue 8):
Prometheus' target labels (``instance``, ``job``, the pod's labels) already name
the scraped node, and a label that changes at every restart splits each series
in two.  The id, the name and the advertise URL are the labels of one info
metric, ``tunmesh_node_info`` (value 1), which dashboards join on ``instance``.
No ``_created`` series are exposed (:func:`disable_created_metrics`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

PREFIX = "tunmesh_"
NODE_ID_LABEL = "node_id"
#: The labels of ``tunmesh_node_info``; reserved, so no base label can hide one.
NODE_INFO_LABELS = ("node_id", "node_name", "advertise_url")
#: The labels of ``tunmesh_peer_info`` (:mod:`tunmesh.metrics.peers`); reserved too.
PEER_INFO_LABELS = ("peer_id", "peer_name", "url", "addresses")
#: Label names a base label may not take: every series would carry it, and these series have their own.
RESERVED_BASE_LABELS = frozenset(NODE_INFO_LABELS + PEER_INFO_LABELS)

# A counter's "_created" series (its creation time) doubles the series count and is no use to
# a dashboard; prometheus_client's switch is process-wide, and every registry in a node is ours.
disable_created_metrics()

# Label names the exposition format reserves for histograms and summaries.
_FORMAT_RESERVED_LABELS = frozenset({"le", "quantile"})
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

DEFAULT_BUCKETS: tuple[float, ...] = Histogram.DEFAULT_BUCKETS

AnyCollector = Counter | Gauge | Histogram


class MetricsError(ValueError):
    """
    Base class of metric definition problems.  A ``ValueError`` so that config
    loading can report a bad ``base_labels`` entry like any other bad value.
    """


class MetricsLabelError(MetricsError):
    """A label name is invalid or collides with a constant label."""


class MetricsConflictError(MetricsError):
    """A metric name was registered twice with a different definition."""


class MetricsDisabledError(Exception):
    """Exposition was requested from a registry whose monitoring is off."""


def _check_label_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _LABEL_NAME.match(name) or name.startswith("__"):
        raise MetricsLabelError(f"{what} {name!r} is not a valid Prometheus label name")
    return name


#: at most this many ``name[]`` selectors in one ``/metrics`` request (more is a 400)
MAX_SELECTED_NAMES = 64


class _Families(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class _ConstantLabelCollector:
    """
    Re-yield every family of an inner registry with constant labels added to
    each sample.  Constant labels are validated not to collide with a sample's
    own labels, so the merge never hides a series.
    """

    def __init__(self, inner: _Families, labels: Mapping[str, str]) -> None:
        self._inner = inner
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            relabelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labels = dict(self._labels)
                labels.update(sample.labels)
                relabelled.samples.append(sample._replace(labels=labels))
            yield relabelled


class Metrics:
    """
    A node's metrics: create-or-get collectors, render the exposition.

    Collectors count whether or not exposition is enabled; ``enabled`` only
    decides whether :meth:`render` may be called (``monitoring.method``).
    """

    def __init__(
        self,
        node_id: str,
        base_labels: Mapping[str, str] | None = None,
        enabled: bool = True,
        *,
        version: str | None = None,
        started_at: float | None = None,
        wall: Callable[[], float] = time.time,
        process_metrics: bool = True,
        node_name: str = "",
        advertise_url: str = "",
    ) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise MetricsError("node_id must be a non-empty string")
        base = dict(base_labels or {})
        for name, value in base.items():
            _check_label_name(name, "base label")
            if name in RESERVED_BASE_LABELS or name in _FORMAT_RESERVED_LABELS:
                raise MetricsLabelError(f"base label {name!r} is reserved")
            if not isinstance(value, str):
                raise MetricsLabelError(f"base label {name!r} must have a string value")
        self.node_id = node_id
        self.enabled = enabled
        self.base_labels: Mapping[str, str] = base
        self._constant: dict[str, str] = dict(base)
        self._inner = CollectorRegistry(auto_describe=True)
        self._exposed = CollectorRegistry()
        self._exposed.register(_ConstantLabelCollector(self._inner, self._constant))
        self._collectors: dict[str, tuple[str, tuple[str, ...], tuple[float, ...], AnyCollector]] = {}

        if process_metrics:
            ProcessCollector(registry=self._inner)
            PlatformCollector(registry=self._inner)
        # Built-in collectors bring their own labels (python_info{version,...});
        # a base label with such a name would silently be overwritten.
        builtin_labels = {key for family in self._inner.collect() for s in family.samples for key in s.labels}
        # build_info carries "version": reserve it before anything is created.
        builtin_labels.add("version")
        clash = sorted(builtin_labels.intersection(base))
        if clash:
            raise MetricsLabelError(f"base label(s) {', '.join(clash)} collide with built-in metric labels")

        if version is None:
            from tunmesh import __version__ as version
        self.gauge("build_info", "Always 1; the version label says which tunmesh runs.", ("version",)).labels(
            version=version
        ).set(1)
        self.gauge("start_time_seconds", "Unix time at which this node process started.").set(
            wall() if started_at is None else started_at
        )
        self._node_info = self.gauge(
            "node_info",
            "Always 1; labels: node_id (random, new at each start), node_name (clustering.node_name, "
            "empty when unnamed) and advertise_url of this node. Join on the target labels (instance).",
            NODE_INFO_LABELS,
        )
        self.set_node_info(node_name=node_name, advertise_url=advertise_url)

    def set_node_info(self, *, node_name: str = "", advertise_url: str = "") -> None:
        """Label ``tunmesh_node_info`` with this node's name and URL (one series: the old one goes)."""
        self._node_info.clear()
        self._node_info.labels(node_id=self.node_id, node_name=node_name, advertise_url=advertise_url).set(1)

    def _full_name(self, name: str) -> str:
        if not isinstance(name, str) or not _METRIC_NAME.match(name):
            raise MetricsError(f"metric name {name!r} is not a valid Prometheus name")
        if name.startswith(PREFIX):
            raise MetricsError(f"metric name {name!r} must be given without the {PREFIX!r} prefix")
        return PREFIX + name

    def _labelnames(self, labelnames: Sequence[str]) -> tuple[str, ...]:
        if isinstance(labelnames, str):
            raise MetricsLabelError("labelnames must be a sequence of names, not a string")
        names = tuple(labelnames)
        for name in names:
            _check_label_name(name, "label")
            if name in self._constant:
                raise MetricsLabelError(f"label {name!r} collides with a base label")
            if name in _FORMAT_RESERVED_LABELS:
                raise MetricsLabelError(f"label {name!r} is reserved by the exposition format")
        if len(set(names)) != len(names):
            raise MetricsLabelError(f"duplicate label names in {names!r}")
        return names

    def _get_or_create(
        self,
        kind: str,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: tuple[float, ...],
        factory: Callable[[str, tuple[str, ...]], AnyCollector],
    ) -> AnyCollector:
        full = self._full_name(name)
        if kind == "counter" and full.endswith("_total"):
            # prometheus_client strips it too: "x" and "x_total" are one counter.
            full = full[: -len("_total")]
        names = self._labelnames(labelnames)
        existing = self._collectors.get(full)
        if existing is not None:
            old_kind, old_names, old_buckets, collector = existing
            if (old_kind, old_names, old_buckets) != (kind, names, buckets):
                raise MetricsConflictError(
                    f"{full} already registered as {old_kind}{list(old_names)}, not {kind}{list(names)}"
                )
            return collector
        if not isinstance(documentation, str) or not documentation:
            raise MetricsError(f"{full} needs a documentation string")
        try:
            collector = factory(full, names)
        except ValueError as e:
            raise MetricsConflictError(f"{full}: {e}") from e
        self._collectors[full] = (kind, names, buckets, collector)
        return collector

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """Create or get the counter ``tunmesh_<name>_total``."""
        c = self._get_or_create(
            "counter",
            name,
            documentation,
            labelnames,
            (),
            lambda full, names: Counter(full, documentation, names, registry=self._inner),
        )
        assert isinstance(c, Counter)
        return c

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Create or get the gauge ``tunmesh_<name>``."""
        g = self._get_or_create(
            "gauge",
            name,
            documentation,
            labelnames,
            (),
            lambda full, names: Gauge(full, documentation, names, registry=self._inner),
        )
        assert isinstance(g, Gauge)
        return g

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """Create or get the histogram ``tunmesh_<name>``; same name needs the same buckets."""
        try:
            normalized = tuple(float(b) for b in buckets)
        except (TypeError, ValueError) as e:
            raise MetricsError(f"histogram {name!r}: buckets must be numbers") from e
        if not normalized or list(normalized) != sorted(set(normalized)):
            raise MetricsError(f"histogram {name!r}: buckets must be non-empty, strictly increasing")
        if normalized[-1] != float("inf"):
            normalized += (float("inf"),)
        h = self._get_or_create(
            "histogram",
            name,
            documentation,
            labelnames,
            normalized,
            lambda full, names: Histogram(full, documentation, names, buckets=normalized, registry=self._inner),
        )
        assert isinstance(h, Histogram)
        return h

    def describe(self) -> list[tuple[str, str, tuple[str, ...], str]]:
        """``(name as exposed, type, label names, HELP)`` of every ``tunmesh_`` metric created so
        far, sorted by name (base labels not listed: they are on every series). Counters are named
        with their ``_total`` suffix, histograms by their family name."""
        out = []
        for full, (kind, names, _buckets, collector) in self._collectors.items():
            exposed = full + "_total" if kind == "counter" else full
            out.append((exposed, kind, names, str(collector._documentation)))
        return sorted(out)

    def collector_registry(self) -> CollectorRegistry:
        """The registry as exposed (constant labels applied), for tests and custom exporters."""
        return self._exposed

    def render(self, names: Collection[str] | None = None) -> tuple[bytes, str]:
        """
        Text exposition (format 0.0.4, as upstream served) and its content type.

        ``names`` selects series by sample name, as the ``name[]`` parameter of prometheus_client's
        own exporters does (``tunmesh_links_connected``, ``tunmesh_dropped_packets_total``,
        ``tunmesh_link_rtt_seconds_bucket``; an unknown name selects nothing): only the collectors
        that own those names run, so a poll of one gauge costs a fraction of the whole exposition.

        :raises MetricsDisabledError: when this node's monitoring is off.
        """
        if not self.enabled:
            raise MetricsDisabledError("metrics exposition is disabled (monitoring.method: none)")
        if names is None:
            return generate_latest(self._exposed), CONTENT_TYPE_PLAIN_0_0_4
        selected = CollectorRegistry(auto_describe=False)
        selected.register(_ConstantLabelCollector(self._inner.restricted_registry(names), self._constant))
        return generate_latest(selected), CONTENT_TYPE_PLAIN_0_0_4
