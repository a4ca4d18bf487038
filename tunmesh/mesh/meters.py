"""``MembershipMetrics``: the counters, histograms and gauges membership and its components update."""

from __future__ import annotations

from typing import Any

from tunmesh.auth.cluster import ClusterAuthority


class MembershipMetrics:
    """Membership's instruments, registered once on the node's ``metrics`` registry."""

    def __init__(self, metrics: Any) -> None:
        self.auth_failures = metrics.counter(
            "auth_failures", "Requests or responses refused by authentication, by reason.", ("reason",)
        )
        self.registrations = metrics.counter(
            "mesh_registrations", "Registrations by direction (in/out) and result.", ("direction", "result")
        )
        self.session_setups = metrics.counter(
            "mesh_session_setups", "Outbound session setups by kind (init/rotate) and result.", ("kind", "result")
        )
        self.inbound_sessions = metrics.counter(
            "mesh_inbound_sessions", "Inbound session setups answered, by kind and result.", ("kind", "result")
        )
        self.bootstraps = metrics.counter(
            "mesh_bootstrap_attempts", "Bootstrap registrations by URL, by result.", ("result",)
        )
        self.removed = metrics.counter("mesh_peers_removed", "Peers removed, by reason.", ("reason",))
        self.gossip_dropped = metrics.counter(
            "mesh_gossip_entries_dropped",
            "Gossip entries (remote nodes in a registration) refused alone, by reason.",
            ("reason",),
        )
        self.session_seconds = metrics.histogram(
            "mesh_session_setup_seconds",
            "Outbound session setups by kind (init/rotate) and result (ok or the failure reason): seconds "
            "from the start to the key installed (or the failure), requests and retries included.",
            ("kind", "result"),
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.peers = metrics.gauge("mesh_peers", "Peers in the node pool.")
        self.sessions = metrics.gauge("mesh_sessions", "Peers with a usable outbound session.")
        # Rotation (docs/security.md): which secret ids this node accepts and signs with, and which ids the
        # cluster tokens it accepted named: before removing an id, its counter must stop growing everywhere.
        self.cluster_secrets = metrics.gauge(
            "cluster_secrets",
            "1 for each cluster secret this node accepts, by secret_id; signing=true for the one it signs with.",
            ("secret_id", "signing"),
        )
        self.cluster_tokens = metrics.counter(
            "cluster_tokens_accepted",
            "Cluster-signed requests accepted, by secret_id (the cluster secret they were signed with).",
            ("secret_id",),
        )

    def show_cluster_secrets(self, cluster: ClusterAuthority) -> None:
        """Set ``cluster_secrets`` to the ids ``cluster`` accepts and signs with (start, SIGHUP)."""
        self.cluster_secrets.clear()
        for secret_id in cluster.secret_ids:
            signing = "true" if secret_id == cluster.signing_id else "false"
            self.cluster_secrets.labels(secret_id=secret_id, signing=signing).set(1)
