"""``tunmesh health``: probe a node's ``/health`` the way the node itself is configured.

A container HEALTHCHECK (or a Kubernetes exec probe) must follow the config, not a hard-coded URL: the probe
connects to ``control_api.listen_address``/``listen_port`` (a wildcard address means the loopback of the same
family), speaks TLS with the node's own trust (``ca_file_path``, else the node's certificate, as the mesh
clients do) and checks the certificate names against the ``control_api_advertise_url`` host only when
``verify_hostname`` is set. Blocking and stdlib-only: it runs once per probe in a fresh process.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

from tunmesh.config.tree import TunMeshConfig

HEALTH_PATH = "/health"
DEFAULT_TIMEOUT = 3.0


def probe_address(listen_address: str) -> str:
    """The address to connect to for a node listening on ``listen_address``."""
    address = ipaddress.ip_address(listen_address)
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return str(address)


def health_url(cfg: TunMeshConfig) -> str:
    """The URL :func:`check_health` probes, for messages."""
    host = probe_address(str(cfg.control_api.listen_address))
    netloc = f"[{host}]" if ":" in host else host
    return f"https://{netloc}:{cfg.control_api.listen_port}{HEALTH_PATH}"


def _tls_context(cfg: TunMeshConfig) -> ssl.SSLContext:
    tls = cfg.control_api.ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(tls.ca_file_path or tls.cert_file_path))
    context.check_hostname = bool(tls.verify_hostname)
    context.set_alpn_protocols(["http/1.1"])  # the port serves the API under this ALPN (links use others)
    return context


def check_health(cfg: TunMeshConfig, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """GET ``/health`` of the node ``cfg`` configures: ``None`` when it answers 200, else one line saying why."""
    url = health_url(cfg)
    host = probe_address(str(cfg.control_api.listen_address))
    port = int(cfg.control_api.listen_port)
    server_name = urlsplit(str(cfg.clustering.control_api_advertise_url)).hostname or host
    try:
        context = _tls_context(cfg)
    except (OSError, ssl.SSLError) as e:
        return f"cannot load the TLS trust for {url}: {e}"
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return f"cannot connect to {url}: {e.strerror or e}"
    try:
        try:
            tls_sock = context.wrap_socket(raw, server_hostname=server_name)
        except ssl.SSLCertVerificationError as e:
            return f"TLS to {url} failed: {e.verify_message or e}"
        except (OSError, ssl.SSLError) as e:
            return f"TLS to {url} failed: {e}"
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        connection.sock = tls_sock  # already connected: request() sends on it
        try:
            connection.request("GET", HEALTH_PATH, headers={"Host": f"{server_name}:{port}"})
            response = connection.getresponse()
            response.read(65536)
        except (OSError, http.client.HTTPException) as e:
            return f"{url}: no HTTP answer: {e or type(e).__name__}"
        finally:
            connection.close()
    finally:
        raw.close()
    if response.status != 200:
        return f"{url} answered {response.status} {response.reason}".rstrip()
    return None


__all__ = ["DEFAULT_TIMEOUT", "HEALTH_PATH", "check_health", "health_url", "probe_address"]
