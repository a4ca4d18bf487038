"""What went wrong with a connection to a peer, in words an operator can act on.

One place for the control plane (:class:`tunmesh.mesh.client.MeshClient`) and the packet links
(:func:`tunmesh.dataplane.link.connect_error`, shown by ``tunmesh status``): a refused port, a timeout, a
certificate the peer or we refused, each with what to check.
"""

from __future__ import annotations

from twisted.python.failure import Failure


def _inner_errors(error: BaseException) -> list[BaseException]:
    """``error`` and what Twisted's HTTP client wrapped in it (``ResponseNeverReceived.reasons``...)."""
    found = [error]
    for reason in getattr(error, "reasons", None) or ():
        inner = reason.value if isinstance(reason, Failure) else reason
        if isinstance(inner, BaseException):
            found.extend(_inner_errors(inner))
    return found


def describe_failure(failure: Failure) -> tuple[str, str]:
    """``(reason, detail)`` of a failed request: the certificate or connection problem, with a hint.

    Twisted reports a refused TLS handshake as ``ResponseNeverReceived`` or
    ``RequestTransmissionFailed`` with the OpenSSL error inside; the operator needs the inside
    (issue 12, defect 7). ``reason`` is a short metric label: ``tls`` or ``transport``. Used for control
    requests (``MeshClient``) and packet-link connections (``tunmesh status``), so both say the same.
    """
    from OpenSSL import SSL
    from service_identity import VerificationError
    from twisted.internet import defer
    from twisted.internet import error as net_error

    errors = _inner_errors(failure.value)
    for exc in errors:
        if isinstance(exc, SSL.Error):
            texts = [str(item[2]) for item in (exc.args[0] if exc.args and isinstance(exc.args[0], list) else [])
                     if isinstance(item, tuple) and len(item) == 3]
            text = "; ".join(texts) or str(exc)
            hint = ""
            if "certificate verify failed" in text:
                hint = " (the peer's certificate is not signed by control_api/ssl/ca_file_path, or has expired)"
            elif "alert" in text:
                hint = " (the peer refused our certificate or TLS parameters)"
            return "tls", f"TLS handshake failed: {text}{hint}"
        if isinstance(exc, VerificationError):
            return "tls", "the peer's certificate does not name the host of its URL (check its subjectAltNames)"
    for exc in errors:
        if isinstance(exc, (net_error.ConnectionRefusedError, ConnectionRefusedError)):
            return "transport", "connection refused (is tunmesh listening on that port?)"
        if isinstance(exc, (net_error.TimeoutError, net_error.TCPTimedOutError, defer.TimeoutError)):
            return "transport", "connection timed out (check the address, the port and network policies)"
    inner = errors[-1]
    return "transport", f"{type(failure.value).__name__}: {type(inner).__name__} {str(inner)[:160]}".rstrip()


__all__ = ["describe_failure"]
