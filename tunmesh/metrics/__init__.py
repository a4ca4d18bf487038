"""Per-node Prometheus metrics: ``tunmesh_`` prefix, base labels on every series, the node in ``tunmesh_node_info``."""

from tunmesh.metrics.peers import PeerInfo
from tunmesh.metrics.registry import (
    DEFAULT_BUCKETS,
    MAX_SELECTED_NAMES,
    Metrics,
    MetricsConflictError,
    MetricsDisabledError,
    MetricsError,
    MetricsLabelError,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "MAX_SELECTED_NAMES",
    "Metrics",
    "MetricsConflictError",
    "MetricsDisabledError",
    "MetricsError",
    "MetricsLabelError",
    "PeerInfo",
]
