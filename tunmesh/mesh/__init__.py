"""Mesh membership: registrations, node pool, bootstrap groups, gossip, grooming, sessions, routes.

* :mod:`structs <tunmesh.mesh.structs>`: :class:`NodeInfo`, :class:`Registration` (wire JSON, strict parsing, bounds).
* :mod:`settings <tunmesh.mesh.settings>`: ``MeshSettings.from_config(cfg)``.
* :mod:`pool <tunmesh.mesh.pool>`: :class:`NodePool`, :class:`Peer` (claims, conflicts, staleness on the monotonic clock).
* :mod:`client <tunmesh.mesh.client>`: :class:`MeshClient` (treq transport with deadlines).
* :mod:`membership <tunmesh.mesh.membership>`: :class:`Membership`, the coordinator (pool, observers, readiness,
  groom tick) of its components: ``inbound``, ``bootstrap`` (groups, gossip), ``session_setup``, ``renewal``,
  ``leave``; they share ``exchange`` (paths, signed requests), ``meters``, ``inflight`` and ``timers``.
* :mod:`api <tunmesh.mesh.api>`: :class:`MeshAPI` (klein routes, ``register_limits``).
* :mod:`service <tunmesh.mesh.service>`: :class:`MeshService`, :func:`build_mesh`.

See docs/api_flows.md.
"""

from tunmesh.interfaces import PeerObserver
from tunmesh.mesh.api import MeshAPI
from tunmesh.mesh.client import MeshClient
from tunmesh.mesh.membership import Membership
from tunmesh.mesh.pool import NodePool, Peer
from tunmesh.mesh.service import MeshService, build_mesh
from tunmesh.mesh.settings import BootstrapGroupSpec, MeshSettings, PeerTiming
from tunmesh.mesh.structs import NodeInfo, Registration

__all__ = [
    "BootstrapGroupSpec",
    "MeshAPI",
    "MeshClient",
    "MeshService",
    "MeshSettings",
    "Membership",
    "NodeInfo",
    "NodePool",
    "Peer",
    "PeerObserver",
    "PeerTiming",
    "Registration",
    "build_mesh",
]
