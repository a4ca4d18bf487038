"""Per-node Prometheus metrics: C{tunmesh_} prefix, C{node_id} and base labels on every series."""

from tunmesh.metrics.registry import (
    DEFAULT_BUCKETS,
    Metrics,
    MetricsConflictError,
    MetricsDisabledError,
    MetricsError,
    MetricsLabelError,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "Metrics",
    "MetricsConflictError",
    "MetricsDisabledError",
    "MetricsError",
    "MetricsLabelError",
]
