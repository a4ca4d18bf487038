"""What to check, for each way a peer, a URL or a link can fail (``tunmesh status``).

Reasons are the fixed labels the mesh counts (:class:`tunmesh.mesh.errors.MeshError` reasons such as
``status_401``, ``transport``, ``response_auth``; :class:`tunmesh.auth.errors.AuthError` reasons for
inbound refusals); ``detail`` is the logged text, used only to tell a refused connection from a silent one.
"""

from __future__ import annotations

SECRET_OR_CLOCK = "check that both nodes use the same cluster secret and that their clocks agree (NTP)"
CLOCK = "check NTP on both nodes: their clocks disagree by more than the token leeway"
PORT = "check that the peer runs and listens on the port of its URL"
NETWORK = "check the address, the port, firewalls and network policies"
TLS = "check the certificates, control_api.ssl.ca_file_path and verify_hostname"

_CLOCK_REASONS = frozenset({"clock_skew", "expired", "not_yet_valid"})

_STATUS = {
    401: f"the peer refused our token: {SECRET_OR_CLOCK}",
    403: "the peer refused us: check its clustering.limits.peer_networks",
    404: "the URL answers, but not with this tunmesh API (wrong port, or another program?)",
    409: "conflict: another live node holds this URL or overlay address (duplicate advertise URL or "
    "node_address_cidr?)",
    421: "this URL leads back to this node",
    429: "the peer rate-limits us; the retries back off",
    503: "the peer is full (clustering.limits.max_nodes) or shutting down",
}


def failure_hint(reason: str, status: int = 0, detail: str = "") -> str:
    """What to check after a failed control request (empty when there is nothing useful to say)."""
    if status in _STATUS and reason in (f"status_{status}", "response_auth"):
        return _STATUS[status]
    if reason.startswith("status_") and reason[7:].isdigit():
        return _STATUS.get(int(reason[7:]), "the peer answered with an error status; see its log")
    if reason == "response_auth":
        if any(r in detail for r in _CLOCK_REASONS):
            return f"the answer's token is outside its validity: {CLOCK}"
        return "the answer is not signed with our cluster secret: check the secret on both nodes (or a load " \
            "balancer that leads to another cluster)"
    if reason == "tls":
        return f"TLS failed: {TLS}"
    if reason == "channel_binding":
        if any(r in detail for r in _CLOCK_REASONS):
            return f"the node's proof of the TLS session is outside its validity: {CLOCK}"
        return "the node at this URL did not prove the TLS session with our cluster secret: it holds another " \
            "cluster secret (check that every node has the same cluster secret), or a TLS relay is in between " \
            "(nothing was sent to it)"
    if reason in ("transport", "timeout"):
        if "refused" in detail:
            return f"nothing listens there: {PORT}"
        return f"no answer: {NETWORK}"
    if reason in ("content_type", "bad_json", "bad_type"):
        return "the URL does not answer like a tunmesh node (wrong port?)"
    if reason == "backoff":
        return "waiting out the backoff before the next try"
    return ""


def link_hint(error: str) -> str:
    """What to check for a link that is not up, from its last error (:func:`tunmesh.dataplane.link.connect_error`)."""
    if not error:
        return ""
    if "refused our link" in error:
        return "the peer does not accept our link yet (sessions are being set up), or it no longer knows us"
    if "no session" in error:
        return "waiting for the session with the peer (set up by the control API)"
    if "TLS" in error:  # before "refused": a TLS error may say the peer refused our certificate
        return TLS
    if "refused" in error:
        return f"nothing listens there: {PORT}"
    if "timed out" in error or "no HELLO" in error:
        return f"no answer: {NETWORK}"
    return ""


def inbound_hint(reason: str) -> str:
    """What to check when requests to this node fail authentication."""
    if reason in _CLOCK_REASONS:
        return f"a node's tokens are outside their validity: {CLOCK}"
    if reason in ("bad_signature", "unknown_key", "malformed", "missing"):
        return "a node with another cluster secret (or no token) is contacting this node: check the secrets"
    if reason == "replay":
        return "a token was replayed (a retrying proxy, or an attack)"
    if reason == "unknown_peer":
        return "a node this one has forgotten is contacting it (it re-registers by itself)"
    return ""


READINESS = {
    "mesh": "not joined: no peer has exchanged a registration with this node yet (see the URLs below)",
    "api": "the API port is not listening",
    "tun": "the TUN device is not open",
}


def readiness_hint(check: str) -> str:
    return READINESS.get(check, f"readiness check {check} is failing")
