"""twistd plugin: ``twistd -n tunmesh --config FILE`` runs one tunmesh node (see :mod:`tunmesh.tap`)."""

from twisted.application.service import ServiceMaker

TunMesh = ServiceMaker(
    "tunmesh",
    "tunmesh.tap",
    "Layer 3 mesh VPN sidecar node (TUN device + one HTTPS port).",
    "tunmesh",
)
