"""Mesh membership: registrations, node pool, bootstrap groups, gossip, grooming, sessions, routes.

* `structs`: `NodeInfo`, `Registration` (wire JSON, strict parsing, bounds).
* `settings`: `MeshSettings.from_config(cfg)`.
* `pool`: `NodePool`, `Peer` (claims, conflicts, staleness on the monotonic clock).
* `client`: `MeshClient` (treq transport with deadlines).
* `membership`: `Membership` (flows, grooming, observers, readiness).
* `api`: `MeshAPI` (klein routes, `register_limits`).
* `service`: `MeshService`, `build_mesh`.

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
