""":class:`MeshAPI`: the ``/tunmesh/`` control and auth routes (klein), thin over :class:`Membership`.

Routes (full paths; the app is mounted at ``/tunmesh/control/v0`` and ``/tunmesh/auth/v0``):

======  ======================================================  ====================================  ===================================
Method  Path                                                    Auth                                  Success
======  ======================================================  ====================================  ===================================
POST    /tunmesh/control/v0/registrations/register              cluster (request or bootstrap token)  200 signed registration
POST    /tunmesh/control/v0/registrations/register/<sender id>  session                               200 signed registration
POST    /tunmesh/auth/v0/init_session                           cluster                               200 signed ``{"kid","public_key"}``
POST    /tunmesh/auth/v0/init_session/<sender id>               session                               200 signed ``{"kid","public_key"}``
GET     /tunmesh/control/v0/peers                               cluster                               200 signed full peer view
======  ======================================================  ====================================  ===================================

The original's unauthenticated ``GET /registrations`` dump is gone (W14); ``/peers`` replaces it behind a
cluster token. Every auth failure (including an unknown sender id) is the same constant 401, counted in
``tunmesh_auth_failures_total{reason}``. Each handler checks in this order: token head (401/429), content
type (415), body size (413), body hash and replay (401), parsing (400), processing (409/421/429/503).
``register_limits`` declares the same head check as ``pre_auth`` so the hardened server refuses a bad token
before reading any body byte (W8).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from tunmesh.api.errors import allowed_methods, render_error
from tunmesh.auth.errors import AuthError
from tunmesh.auth.tokens import PendingToken, VerifiedToken
from tunmesh.errors import StatusError
from tunmesh.logutil import RateLimitedLog
from tunmesh.mesh.client import is_json_media_type
from tunmesh.mesh.exchange import AUTH, CONTROL, INIT_SESSION_PATH, LEAVE_PATH, PEERS_PATH, REGISTER_PATH
from tunmesh.mesh.membership import Membership
from tunmesh.mesh.structs import dumps_json
from tunmesh.mesh.traffic import ControlTraffic
from tunmesh.tls.binding import control_binding

MAX_REGISTRATION_BODY = 64 * 1024
MAX_INIT_SESSION_BODY = 8 * 1024
MAX_LEAVE_BODY = 256

_JSON = b"application/json"

_ID = r"[^/]+"
_SESSION_PATH = re.compile(r"^(?P<base>.+)/(?P<peer>[^/]+)$")

#: verify the token head of a request (Authorization, method, path, the connection's cnf) -> PendingToken
#: (raises AuthError)
HeadCheck = Callable[[Any, str, str, "str | None"], PendingToken]


class _FullPath(Resource):
    """Serve a klein app with its FULL request path, wherever it is mounted.

    ``ControlAPI.mount`` strips the prefix into ``prepath``; the mesh routes are declared with full paths
    (so one app serves both ``/tunmesh/control/v0`` and ``/tunmesh/auth/v0``) and the path is what the
    tokens bind (``htu``).
    """

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: Any) -> Any:
        request.postpath = list(request.prepath) + list(request.postpath)
        request.prepath = []
        return self._inner.render(request)


def _authorization(headers: Any) -> bytes | None:
    """The one ``Authorization`` value; two or more are refused (``malformed``, 401).

    With several, the early check and the handler could read different ones (issue 12).
    """
    values = headers.getRawHeaders(b"Authorization")
    if not values:
        return None
    if len(values) > 1:
        raise AuthError("malformed")
    value: bytes = values[0]
    return value


def _is_json(content_type: bytes | None) -> bool:
    """``application/json``, with no parameter or ``charset=utf-8`` only (the body is decoded as UTF-8)."""
    return content_type is not None and is_json_media_type(content_type.decode("latin-1"))


class MeshAPI:
    """Klein app for the mesh routes; one per node, around its :class:`Membership`."""

    app = Klein()
    log = Logger()

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        self._errors = membership.metrics.counter(
            "errors", "Unexpected exceptions caught at a boundary, by where (api, pre_auth, a mesh route...).", ("where",)
        )
        self._rlog = RateLimitedLog(self.log, membership.clock)
        self._traffic = ControlTraffic(membership.metrics)

    # -- mounting ----------------------------------------------------------------------------------

    def resource(self) -> IResource:
        return _FullPath(self.app.resource())

    def mount_on(self, control_api: Any) -> None:
        """Mount on a :class:`tunmesh.api.app.ControlAPI` at both version prefixes."""
        resource = self.resource()
        control_api.mount(CONTROL, resource)
        control_api.mount(AUTH, resource)

    def register_limits(self, limits: Any) -> None:
        """Body limits and early token checks for the hardened server (``RouteLimits.add``)."""
        limits.add(b"POST", re.escape(REGISTER_PATH), MAX_REGISTRATION_BODY, self._pre_auth(self._cluster_head(True), "register"))
        limits.add(
            b"POST",
            re.escape(REGISTER_PATH) + "/" + _ID,
            MAX_REGISTRATION_BODY,
            self._pre_auth(self._session_head, "register/<id>"),
        )
        limits.add(
            b"POST", re.escape(INIT_SESSION_PATH), MAX_INIT_SESSION_BODY, self._pre_auth(self._cluster_head(False), "init_session")
        )
        limits.add(
            b"POST",
            re.escape(INIT_SESSION_PATH) + "/" + _ID,
            MAX_INIT_SESSION_BODY,
            self._pre_auth(self._session_head, "init_session/<id>"),
        )
        limits.add(b"GET", re.escape(PEERS_PATH), 0, self._pre_auth(self._cluster_head(False), "peers"))
        limits.add(
            b"POST", re.escape(LEAVE_PATH) + "/" + _ID, MAX_LEAVE_BODY, self._pre_auth(self._session_head, "leave/<id>")
        )

    def _pre_auth(self, check: HeadCheck, where: str) -> Callable[[Any], Any]:
        def pre_auth(head: Any) -> Any:
            method = head.method.decode("ascii", "replace") if isinstance(head.method, bytes) else head.method
            try:
                check(_authorization(head.headers), method, head.path, control_binding(head.transport))
            except AuthError as exc:
                self.membership.auth_failed(exc, where)
                if exc.status == 429:
                    from tunmesh.api.server import Refusal

                    return Refusal(429, int(exc.retry_after or 10) or 1)
                return exc.status
            return None

        return pre_auth

    # -- head checks ---------------------------------------------------------------------------------

    def _cluster_head(self, accept_bootstrap: bool) -> HeadCheck:
        def check(header: Any, method: str, path: str, cnf: str | None) -> PendingToken:
            return self.membership.cluster.verify_request_head(
                header, method, path, accept_bootstrap=accept_bootstrap, cnf=cnf
            )

        return check

    def _session_head(self, header: Any, method: str, path: str, cnf: str | None) -> PendingToken:
        match = _SESSION_PATH.match(path.split("?", 1)[0])
        if match is None:
            raise AuthError("wrong_path")
        return self.membership.session_auth.verify_request_head(match.group("peer"), header, method, path, cnf=cnf)

    # -- the common request pipeline ---------------------------------------------------------------

    def _handle(
        self,
        request: IRequest,
        where: str,
        head: HeadCheck,
        max_body: int,
        process: Callable[[VerifiedToken, bytes], tuple[bytes, Callable[[bytes], str], Callable[[], None] | None]],
        needs_body: bool = True,
    ) -> bytes:
        received: list[bytes] = []
        answer = b""
        try:
            answer = self._answer(request, where, head, max_body, process, needs_body, received)
            return answer
        finally:
            # a refusal raises (rendered by handle_errors): counted with the body received, none sent
            path = request.path.decode("ascii", "replace")
            self._traffic.server(path, len(received[0]) if received else 0, len(answer))

    def _answer(
        self,
        request: IRequest,
        where: str,
        head: HeadCheck,
        max_body: int,
        process: Callable[[VerifiedToken, bytes], tuple[bytes, Callable[[bytes], str], Callable[[], None] | None]],
        needs_body: bool,
        received: list[bytes],
    ) -> bytes:
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("ascii", "replace")
        try:
            cnf = control_binding(getattr(request, "transport", None))
            pending = head(_authorization(request.requestHeaders), method, path, cnf)
            if needs_body and not _is_json(request.getHeader(b"Content-Type")):
                return render_error(request, 415)
            body = request.content.read(max_body + 1) if request.content is not None else b""
            received.append(body)
            if len(body) > max_body:
                return render_error(request, 413)
            token = pending.verify_body(body)
        except AuthError as exc:
            self.membership.auth_failed(exc, where)
            raise
        self.membership.cluster_token_accepted(token)
        self.membership.touch(token.iss)
        try:
            response_body, sign, commit = process(token, body)
        except AuthError as exc:
            self.membership.auth_failed(exc, where)
            raise
        # MeshError and KexError go to refused() as they are.
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", _JSON)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Authorization", sign(response_body).encode("ascii"))
        if commit is not None:
            commit()
        return response_body

    # -- routes --------------------------------------------------------------------------------------

    def _register(self, token: VerifiedToken, body: bytes) -> tuple[bytes, Callable[[bytes], str], None]:
        self.membership.inbound.accept_registration(token.iss, body)
        response = self.membership.our_registration(token.iss).to_json()
        return response, self._cluster_signer(token), None

    def _register_session(self, token: VerifiedToken, body: bytes) -> tuple[bytes, Callable[[bytes], str], None]:
        self.membership.inbound.accept_registration(token.iss, body)
        self.membership.renewal.answered(token.iss)
        response = self.membership.our_registration(token.iss).to_json()
        return response, self._session_signer(token), None

    def _cluster_signer(self, token: VerifiedToken) -> Callable[[bytes], str]:
        return lambda body: self.membership.cluster.sign_response(token.iss, token, body, cnf=token.cnf)

    def _session_signer(self, token: VerifiedToken) -> Callable[[bytes], str]:
        return lambda body: self.membership.session_auth.sign_response(token, body, cnf=token.cnf)

    @app.route(REGISTER_PATH, methods=["POST"])
    def register(self, request: IRequest) -> bytes:
        """Bootstrap or fallback registration (cluster token; bootstrap typ accepted only here, W4)."""
        return self._handle(request, "register", self._cluster_head(True), MAX_REGISTRATION_BODY, self._register)

    @app.route(REGISTER_PATH + "/<string:sender>", methods=["POST"])
    def register_session(self, request: IRequest, sender: str) -> bytes:
        """Renewal with the sender's session token; an unknown sender is a plain 401 (W14)."""
        return self._handle(
            request, "register/<id>", self._session_head, MAX_REGISTRATION_BODY, self._register_session
        )

    @app.route(INIT_SESSION_PATH, methods=["POST"])
    def init_session(self, request: IRequest) -> bytes:
        """First session for the caller's sending direction (cluster token)."""

        def process(token: VerifiedToken, body: bytes) -> Any:
            response, commit = self.membership.inbound.accept_init_session(token, body)
            return response, self._cluster_signer(token), commit

        return self._handle(request, "init_session", self._cluster_head(False), MAX_INIT_SESSION_BODY, process)

    @app.route(INIT_SESSION_PATH + "/<string:sender>", methods=["POST"])
    def init_session_rotate(self, request: IRequest, sender: str) -> bytes:
        """Rotation, authenticated with the current session; answered with that same key (W11)."""

        def process(token: VerifiedToken, body: bytes) -> Any:
            response, commit = self.membership.inbound.accept_init_session(token, body)
            return response, self._session_signer(token), commit

        return self._handle(request, "init_session/<id>", self._session_head, MAX_INIT_SESSION_BODY, process)

    @app.route(LEAVE_PATH + "/<string:sender>", methods=["POST"])
    def leave(self, request: IRequest, sender: str) -> bytes:
        """The sender shuts down (session token of its direction): remove it at once."""

        def process(token: VerifiedToken, body: bytes) -> Any:
            commit = self.membership.inbound.accept_leave(token.iss, body)
            return b"{}", self._session_signer(token), commit

        return self._handle(request, "leave/<id>", self._session_head, MAX_LEAVE_BODY, process)

    @app.route(PEERS_PATH, methods=["GET"])
    def peers(self, request: IRequest) -> bytes:
        """The full peer view, for holders of the cluster secret only (replaces GET /registrations)."""

        def process(token: VerifiedToken, body: bytes) -> Any:
            return dumps_json(self.peer_view()), self._cluster_signer(token), None

        return self._handle(request, "peers", self._cluster_head(False), 0, process, needs_body=False)

    def peer_view(self) -> dict[str, Any]:
        m = self.membership
        now = m.monotonic()
        peers = {}
        for peer in m.pool:
            out = m.sessions.outbound(peer.id)
            peers[peer.id] = {
                "listen_url": peer.url,
                "class": peer.peer_class,
                "addresses": [str(r) for r in peer.routes],
                "last_contact_age": round(peer.age(now), 3),
                "stale": peer.is_stale(now),
                "outbound_session_age": None if out is None else round(now - out.created, 3),
                "registered_with": peer.registered_with,
            }
        return {"id": m.node_id, "listen_url": m.local.listen_url, "ready": m.ready(), "peers": peers}

    # -- errors --------------------------------------------------------------------------------------

    @app.handle_errors(StatusError)
    def refused(self, request: IRequest, failure: Failure) -> bytes:
        """A refusal of the pipeline or of membership (``AuthError``, ``MeshError``, ``KexError``):
        its status with the constant body."""
        error = failure.value
        assert isinstance(error, StatusError)
        return render_error(request, error.status, retry_after=error.retry_after)

    @app.handle_errors(NotFound, RequestRedirect)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, 404)

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, 405, allow=allowed_methods(failure))

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        self._errors.labels(where="mesh").inc()
        self.log.failure("unhandled error in {path}", failure=failure, level=LogLevel.debug, path=request.path)
        self._rlog.emit(
            ("mesh_api_error", failure.type),
            LogLevel.error,
            "unhandled {type} in a mesh route; answered 500",
            type=failure.type.__name__,
        )
        return render_error(request, 500)
