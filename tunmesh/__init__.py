"""tunmesh: a Layer 3 mesh VPN sidecar."""

__version__ = "0.1.0"
