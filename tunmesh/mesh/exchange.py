"""``PeerExchange``: the control paths, and signed requests to peers with the checks of their answers.

Every answer a peer gives is checked the same way (status, media type, then the response token, W4).
A request to a known peer goes with our session token when we hold one, and with the cluster token
when we do not or when the peer refused the session token (401/404: it restarted or forgot us); that
fallback is written once here, for session rotation and for renewal.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from tunmesh.auth.cluster import ClusterAuthority
from tunmesh.auth.errors import AuthError
from tunmesh.auth.sessions import SessionAuthority, SessionStore
from tunmesh.auth.tokens import TYP_REQUEST, SignedRequest, VerifiedToken
from tunmesh.mesh.client import MeshClient, RawResponse
from tunmesh.mesh.errors import PeerRequestFailed, SessionRefused
from tunmesh.mesh.settings import MeshSettings

CONTROL = "/tunmesh/control/v0"
AUTH = "/tunmesh/auth/v0"
REGISTER_PATH = CONTROL + "/registrations/register"
INIT_SESSION_PATH = AUTH + "/init_session"
PEERS_PATH = CONTROL + "/peers"
LEAVE_PATH = CONTROL + "/registrations/leave"


def register_path(node_id: str) -> str:
    return f"{REGISTER_PATH}/{node_id}"


def init_session_path(node_id: str) -> str:
    return f"{INIT_SESSION_PATH}/{node_id}"


def leave_path(node_id: str) -> str:
    return f"{LEAVE_PATH}/{node_id}"


def leave_body(node_id: str) -> bytes:
    return b'{"id":"' + node_id.encode("ascii") + b'"}'


def retry_after(exc: object) -> float:
    """The Retry-After a failed request carried (0 when none)."""
    retry = getattr(exc, "retry_after", None)
    return float(retry) if isinstance(retry, (int, float)) else 0.0


class PeerExchange:
    """Signs requests to peers and checks their answers; refused auth is reported to ``auth_failed``."""

    def __init__(
        self,
        settings: MeshSettings,
        cluster: ClusterAuthority,
        sessions: SessionStore,
        session_auth: SessionAuthority,
        client: MeshClient,
        auth_failed: Callable[[AuthError, str], None],
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.sessions = sessions
        self.session_auth = session_auth
        self.client = client
        self._auth_failed = auth_failed

    def check_response(self, response: RawResponse, url: str) -> None:
        if response.status != 200:
            retry_after = None
            if response.status == 429 and response.retry_after is not None:
                try:
                    retry_after = min(float(response.retry_after), self.settings.backoff_max)
                except ValueError:
                    retry_after = None
            raise PeerRequestFailed(
                f"status_{response.status}", f"{url} answered {response.status}", response.status, retry_after
            )
        if not response.is_json():
            raise PeerRequestFailed("content_type", url, response.status)

    def verify_cluster(
        self, response: RawResponse, expected: str | None, request: SignedRequest, where: str
    ) -> VerifiedToken:
        try:
            return self.cluster.verify_response(
                response.authorization, expected, request, response.body, cnf=response.channel
            )
        except AuthError as exc:
            self._auth_failed(exc, where)
            raise PeerRequestFailed("response_auth", exc.reason, response.status) from None

    def verify_session(
        self, peer_id: str, response: RawResponse, request: SignedRequest, where: str
    ) -> VerifiedToken:
        try:
            return self.session_auth.verify_response(
                peer_id, response.authorization, request, response.body, cnf=response.channel
            )
        except AuthError as exc:
            self._auth_failed(exc, where)
            raise PeerRequestFailed("response_auth", exc.reason, response.status) from None

    @inlineCallbacks
    def post(
        self,
        peer_id: str,
        url: str,
        what: str,
        session_path: str,
        cluster_path: str,
        body: Callable[[], bytes],
        *,
        session_timeout: float | None = None,
        refused: Callable[[], None] | None = None,
        falling_back: Callable[[], None] | None = None,
        fall_back_when_refused: bool = True,
    ) -> Generator[Deferred[Any], Any, tuple[RawResponse, bool]]:
        """POST ``body()`` to ``peer_id`` with our session token to ``session_path``, else with the
        cluster token to ``cluster_path``; fires with the checked answer and whether the cluster token
        was used.

        The session-token request is tried when we hold an outbound session. Refused with 401/404, its
        key is dropped and ``refused()`` is called; then, unless ``fall_back_when_refused`` is false (the
        caller asks the peer's URL itself: :class:`SessionRefused`), ``falling_back()`` is called and
        ``body()`` is asked again (a fresh registration or key exchange) for the cluster-token request.
        ``what`` names the route in auth-failure reports (``what/<id> response``, ``what response``).
        """
        if self.sessions.outbound(peer_id) is not None:
            payload = body()
            request = self.session_auth.sign_request(peer_id, "POST", session_path, payload)
            response = yield self.client.post(
                url, session_path, payload, request, timeout=session_timeout
            )
            if response.status not in (401, 404):
                self.check_response(response, url)
                self.verify_session(peer_id, response, request, f"{what}/<id> response")
                return response, False
            # The peer no longer knows this key: drop it and start over with the cluster token.
            self.sessions.invalidate_outbound(peer_id, request.kid)
            if refused is not None:
                refused()
            if not fall_back_when_refused:
                raise SessionRefused("session_refused", f"{url} answered {response.status}", response.status)
        if falling_back is not None:
            falling_back()
        payload = body()
        request = self.cluster.sign_request(peer_id, "POST", cluster_path, payload, typ=TYP_REQUEST)
        response = yield self.client.post(
            url, cluster_path, payload, request, timeout=self.settings.registration_timeout
        )
        self.check_response(response, url)
        self.verify_cluster(response, peer_id, request, f"{what} response")
        return response, True
