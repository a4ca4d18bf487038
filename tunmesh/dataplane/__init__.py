"""The data plane: packet checks, routing, the peer-link frame codec and links, the TUN loop.

See docs/protocols.md (data plane) for the wire format and drop reasons.
"""

from tunmesh.dataplane.link import LinkClient, LinkMetrics, LinkServerFactory, TLSLinkConnector
from tunmesh.dataplane.plane import DataPlane
from tunmesh.dataplane.router import Router, RouteTable

__all__ = [
    "DataPlane",
    "LinkClient",
    "LinkMetrics",
    "LinkServerFactory",
    "RouteTable",
    "Router",
    "TLSLinkConnector",
]
