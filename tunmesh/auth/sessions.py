"""Per-peer, per-direction session keys with make-before-break rotation, and session tokens (W1, W11).

For traffic S -> V the secret comes from an X25519 exchange that S starts and V answers (tunmesh.auth.kex).
V keeps it as its *inbound* session for S, S as its *outbound* session to V. Each direction is independent:
no lock or wait is shared between directions, so simultaneous rotations cannot deadlock.

Lifetimes (ages on the injected monotonic clock, from installation):

* outbound: rotation due at ``max_age * U(0.9, 1.0)`` (jitter drawn per session); unusable after
  ``max_age + validity`` (the caller then sets up a new session with the cluster token);
* inbound current: refused (``session_expired``) after ``max_age + validity + leeway``;
* inbound previous: kept after a rotation for ``validity + leeway`` so in-flight tokens signed with the old
  kid still verify, then refused with ``unknown_key``. The outbound previous is kept as long, to verify
  responses to requests signed with it.

Session tokens: requests (``tm-req+jwt``) and link hellos (``tm-link+jwt``) are signed with the direction's
"session-request" / "link-hello" keys and carry ``ctr`` (0, 1, 2, ... per direction and kid), checked
against an 8192-counter window after the HMAC. The receiver V answers a session request with a
``tm-resp+jwt`` token signed with the SAME direction's "session-response" key and kid, ``rid`` = the
request's ctr: only S and V know that secret, the purpose key separates it from requests, and the answer
never needs the reverse session (unlike upstream).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger, LogLevel

from tunmesh.auth import keys
from tunmesh.auth.cluster import check_timing
from tunmesh.auth.errors import AuthError
from tunmesh.auth.replay import MAX_CTR, ReplayWindow
from tunmesh.auth.tokens import (
    MAX_LIFETIME,
    TYP_LINK,
    TYP_REQUEST,
    TYP_RESPONSE,
    PendingToken,
    SignedRequest,
    VerifiedToken,
    base_claims,
    bearer,
    binder,
    check_rid,
    encode_token,
    is_cluster_kid,
    parse_authorization,
    unverified_parts,
    valid_kid,
    valid_node_id,
    verify_token,
)
from tunmesh.interfaces import SecondsClock, SessionObserver

INBOUND = "inbound"
OUTBOUND = "outbound"
DEFAULT_INIT_INTERVAL = 10.0
JITTER = (0.9, 1.0)


class _SessionKeys:
    """The purpose keys of one session secret (the secret itself is never logged or repr'd)."""

    def __init__(self, peer_id: str, kid: str, secret: bytes, created: float) -> None:
        if len(secret) < 32:
            raise ValueError("session secret must be at least 32 bytes")
        if not valid_kid(kid) or is_cluster_kid(kid):
            raise ValueError("invalid session kid")
        self.peer_id = peer_id
        self.kid = kid
        self.created = created
        self.retire_at: float | None = None
        self.request_key = keys.derive_key(secret, keys.SESSION_REQUEST)
        self.response_key = keys.derive_key(secret, keys.SESSION_RESPONSE)
        self.hello_key = keys.derive_key(secret, keys.LINK_HELLO)
        #: the data plane's frame key for links of this direction and kid
        self.frame_key = keys.derive_key(secret, keys.LINK_FRAMES)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(peer_id={self.peer_id!r}, kid={self.kid!r})"


class OutboundSession(_SessionKeys):
    """Our sending key to a peer; ``next_ctr()`` numbers our tokens under this kid."""

    def __init__(self, peer_id: str, kid: str, secret: bytes, created: float, rotate_after: float) -> None:
        super().__init__(peer_id, kid, secret, created)
        self.rotate_after = rotate_after
        self._next = 0

    def next_ctr(self) -> int:
        """The next counter: 0, 1, 2, ... (never reused)."""
        ctr = self._next
        if ctr > MAX_CTR:
            raise OverflowError("session counter exhausted")
        self._next += 1
        return ctr


class InboundSession(_SessionKeys):
    """A peer's sending key to us, with its replay window."""

    def __init__(self, peer_id: str, kid: str, secret: bytes, created: float, window_size: int) -> None:
        super().__init__(peer_id, kid, secret, created)
        self.window = ReplayWindow(window_size)


@dataclass
class _Peer:
    outbound: OutboundSession | None = None
    outbound_previous: OutboundSession | None = None
    inbound: InboundSession | None = None
    inbound_previous: InboundSession | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SessionStore:
    """All session keys of this node, by peer id."""

    log = Logger()

    def __init__(
        self,
        node_id: str,
        clock: SecondsClock,
        monotonic: Callable[[], float] = time.monotonic,
        max_age: float = 3600.0,
        validity: float = 30.0,
        leeway: float = 60.0,
        rng: random.Random | None = None,
        init_interval: float = DEFAULT_INIT_INTERVAL,
        window_size: int = 8192,
    ) -> None:
        check_timing(validity, leeway)
        # Rotation may be faster than the previous key's retention (tests rotate every few seconds):
        # only {previous, current} are kept, and a token is used within milliseconds of minting,
        # so a third, older key is never needed.
        if max_age < 1.0:
            raise ValueError("session max_age must be at least 1 second")
        self.node_id = node_id
        self.clock = clock
        self.monotonic = monotonic
        self.max_age = max_age
        self.validity = min(validity, MAX_LIFETIME)
        self.leeway = leeway
        self.init_interval = init_interval
        self.window_size = window_size
        self._rng = rng or random.SystemRandom()
        self._peers: dict[str, _Peer] = {}
        self._last_init: dict[str, float] = {}
        self._observers: list[SessionObserver] = []

    # -- observers ----------------------------------------------------------------------------------

    def add_observer(self, observer: SessionObserver) -> None:
        """Call ``observer(peer_id, direction, kid)`` on every install, and with kid None on forget."""
        self._observers.append(observer)

    def remove_observer(self, observer: SessionObserver) -> None:
        self._observers.remove(observer)

    def _notify(self, peer_id: str, direction: str, kid: str | None) -> None:
        for observer in list(self._observers):
            try:
                observer(peer_id, direction, kid)
            except Exception:
                self.log.failure("session observer failed for {peer_id}", peer_id=peer_id)

    # -- lookups -----------------------------------------------------------------------------------

    def peers(self) -> frozenset[str]:
        """Peers with any session state."""
        return frozenset(self._peers)

    def _hard_outbound_limit(self) -> float:
        return self.max_age + self.validity

    def _hard_inbound_limit(self) -> float:
        return self.max_age + self.validity + self.leeway

    def outbound(self, peer_id: str) -> OutboundSession | None:
        """The current sending session to ``peer_id``, or None (none yet, or too old to use)."""
        peer = self._peers.get(peer_id)
        if peer is None or peer.outbound is None:
            return None
        if self.monotonic() - peer.outbound.created >= self._hard_outbound_limit():
            return None
        return peer.outbound

    def outbound_for_kid(self, peer_id: str, kid: str) -> OutboundSession | None:
        """The sending session with this kid (current, or previous until it retires): for responses."""
        peer = self._peers.get(peer_id)
        if peer is None:
            return None
        now = self.monotonic()
        if peer.outbound is not None and peer.outbound.kid == kid:
            return peer.outbound
        prev = peer.outbound_previous
        if prev is not None and prev.kid == kid and prev.retire_at is not None and now < prev.retire_at:
            return prev
        return None

    def lookup_inbound(self, peer_id: str, kid: str) -> InboundSession:
        """The receiving session for (peer, kid); raises unknown_peer, unknown_key or session_expired."""
        peer = self._peers.get(peer_id)
        if peer is None or (peer.inbound is None and peer.inbound_previous is None):
            raise AuthError("unknown_peer")
        now = self.monotonic()
        current = peer.inbound
        if current is not None and current.kid == kid:
            if now - current.created >= self._hard_inbound_limit():
                raise AuthError("session_expired")
            return current
        prev = peer.inbound_previous
        if prev is not None:
            if prev.retire_at is not None and now >= prev.retire_at:
                peer.inbound_previous = None  # retired: forget it for good
            elif prev.kid == kid:
                return prev
        raise AuthError("unknown_key")

    def inbound(self, peer_id: str, kid: str) -> InboundSession | None:
        """The receiving session for (peer, kid) if it may still be used, else None."""
        try:
            return self.lookup_inbound(peer_id, kid)
        except AuthError:
            return None

    def needs_rotation(self, peer_id: str) -> bool:
        """True when there is no usable outbound session to ``peer_id`` or its jittered age is reached."""
        session = self.outbound(peer_id)
        if session is None:
            return True
        return self.monotonic() - session.created >= session.rotate_after

    # -- changes -----------------------------------------------------------------------------------

    def install_outbound(self, peer_id: str, kid: str, secret: bytes) -> OutboundSession:
        """Start sending to ``peer_id`` under ``kid`` (counter from 0); the old one stays for responses."""
        if not valid_node_id(peer_id):
            raise ValueError("invalid peer id")
        now = self.monotonic()
        jitter = self._rng.uniform(*JITTER)
        session = OutboundSession(peer_id, kid, secret, now, self.max_age * jitter)
        peer = self._peers.setdefault(peer_id, _Peer())
        rotation = peer.outbound is not None
        if peer.outbound is not None:
            if peer.outbound.kid == kid:
                raise ValueError("kid already installed")
            peer.outbound.retire_at = now + self.validity + self.leeway
            peer.outbound_previous = peer.outbound
        peer.outbound = session
        # A rotation (hourly, per peer: counted in metrics) is routine: INFO stays quiet at steady state.
        self.log.emit(
            LogLevel.debug if rotation else LogLevel.info,
            "outbound session to {peer_id} installed, kid {kid}", peer_id=peer_id, kid=kid,
        )
        self._notify(peer_id, OUTBOUND, kid)
        return session

    def install_inbound(self, peer_id: str, kid: str, secret: bytes) -> InboundSession:
        """Accept ``peer_id``'s tokens under ``kid``; the current one becomes previous (make-before-break)."""
        if not valid_node_id(peer_id):
            raise ValueError("invalid peer id")
        now = self.monotonic()
        session = InboundSession(peer_id, kid, secret, now, self.window_size)
        peer = self._peers.setdefault(peer_id, _Peer())
        rotation = peer.inbound is not None
        if peer.inbound is not None:
            if peer.inbound.kid == kid:
                raise ValueError("kid already installed")
            peer.inbound.retire_at = now + self.validity + self.leeway
            peer.inbound_previous = peer.inbound
        peer.inbound = session
        self.log.emit(
            LogLevel.debug if rotation else LogLevel.info,
            "inbound session from {peer_id} installed, kid {kid}", peer_id=peer_id, kid=kid,
        )
        self._notify(peer_id, INBOUND, kid)
        return session

    def invalidate_outbound(self, peer_id: str, kid: str) -> bool:
        """Drop the outbound session ``kid`` after the peer refused it (a 4xx); True if it was current."""
        peer = self._peers.get(peer_id)
        if peer is None or peer.outbound is None or peer.outbound.kid != kid:
            return False
        peer.outbound = None
        self.log.warn("outbound session to {peer_id} invalidated, kid {kid}", peer_id=peer_id, kid=kid)
        self._notify(peer_id, OUTBOUND, None)
        return True

    def forget(self, peer_id: str) -> None:
        """Remove every key, window and rate-limit entry of ``peer_id`` (grooming)."""
        self._last_init.pop(peer_id, None)
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        self.log.info("sessions with {peer_id} forgotten", peer_id=peer_id)
        self._notify(peer_id, INBOUND, None)
        self._notify(peer_id, OUTBOUND, None)

    def ages(self, peer_id: str) -> dict[str, tuple[str, float] | None]:
        """``{"out": (kid, age) | None, "in": (kid, age) | None}``: the current session of each direction
        and its age in seconds (``tunmesh status``; kids are identifiers, not key material)."""
        peer = self._peers.get(peer_id)
        now = self.monotonic()
        out = peer.outbound if peer is not None else None
        inb = peer.inbound if peer is not None else None
        return {
            "out": (out.kid, now - out.created) if out is not None else None,
            "in": (inb.kid, now - inb.created) if inb is not None else None,
        }

    def inbound_rate_limit(self, peer_id: str) -> None:
        """Allow one init_session per ``init_interval`` per peer (the first always); else rate_limited (429).

        Call it only AFTER the init request authenticated, so strangers cannot use up a peer's turn.
        """
        now = self.monotonic()
        last = self._last_init.get(peer_id)
        if last is not None and now - last < self.init_interval:
            raise AuthError("rate_limited", retry_after=self.init_interval - (now - last))
        if len(self._last_init) > 4 * max(len(self._peers), 256):
            self._last_init = {
                p: t for p, t in self._last_init.items() if now - t < self.init_interval
            }
        self._last_init[peer_id] = now


class SessionAuthority:
    """Signs and verifies session tokens with the keys in a :class:`SessionStore`."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    @property
    def node_id(self) -> str:
        return self.store.node_id

    def _claims(self, aud: str, body: bytes, cnf: str | None) -> dict[str, Any]:
        return base_claims(self.node_id, aud, self.store.clock.seconds(), self.store.validity, body, cnf)

    def _outbound(self, peer_id: str) -> OutboundSession:
        session = self.store.outbound(peer_id)
        if session is None:
            raise AuthError("unknown_peer")
        return session

    def sign_request(
        self, peer_id: str, method: str, path: bytes | str, body: bytes, cnf: str | None = None
    ) -> SignedRequest:
        """A request token to ``peer_id`` with the current outbound kid and the next ctr.

        Raises AuthError("unknown_peer") when there is no usable outbound session (set one up first).
        """
        session = self._outbound(peer_id)
        if isinstance(path, bytes):
            path = path.decode("ascii")
        ctr = session.next_ctr()
        claims = self._claims(peer_id, body, cnf)
        claims.update(htm=method.upper(), htu=path.split("?", 1)[0], ctr=ctr)
        token = encode_token(session.request_key, TYP_REQUEST, session.kid, claims)
        return SignedRequest(
            header_value=bearer(token),
            kid=session.kid,
            rid=ctr,
            peer_id=peer_id,
            bind=binder(session.request_key, TYP_REQUEST, session.kid, claims),
        )

    def _verify_counted(
        self,
        token: str,
        peer_id: str | None,
        typ: str,
        key_attr: str,
        method: bytes | str | None,
        path: bytes | str | None,
        cnf: str | None,
    ) -> PendingToken:
        sessions: list[InboundSession] = []

        def key_for(header: Mapping[str, Any], claims: Mapping[str, Any]) -> bytes:
            iss = peer_id if peer_id is not None else claims.get("iss")
            if not isinstance(iss, str) or not valid_node_id(iss):
                raise AuthError("wrong_issuer")
            session = self.store.lookup_inbound(iss, header["kid"])
            sessions.append(session)
            return getattr(session, key_attr)

        verified = self._verify(token, key_for, typ, method, path, cnf)
        session = sessions[0]
        if verified.iss != session.peer_id:
            raise AuthError("wrong_issuer")
        assert verified.ctr is not None
        if not session.window.check(verified.ctr):
            raise AuthError("replay")

        def commit(token: VerifiedToken) -> None:
            assert token.ctr is not None
            if not session.window.check_and_update(token.ctr):
                raise AuthError("replay")

        return PendingToken(verified, commit)

    def _verify(
        self,
        token: str,
        key_for: Callable[[Mapping[str, Any], Mapping[str, Any]], bytes],
        typ: str,
        method: bytes | str | None,
        path: bytes | str | None,
        cnf: str | None,
    ) -> VerifiedToken:
        if isinstance(method, bytes):
            method = method.decode("ascii", errors="replace")
        return verify_token(
            token,
            key_for=key_for,
            accept_typs=frozenset({typ}),
            cluster=False,
            audience=self.node_id,
            now=self.store.clock.seconds(),
            leeway=self.store.leeway,
            method=method,
            path=path,
            counter="ctr",
            expect_cnf=cnf,
        )

    def verify_request_head(
        self,
        peer_id: str | None,
        header_value: bytes | str | None,
        method: bytes | str,
        path: bytes | str,
        cnf: str | None = None,
    ) -> PendingToken:
        """Verify a session request from its headers; the inbound key is chosen by ``kid``.

        ``peer_id`` is the sender when the route names it, else None (the token's ``iss`` picks the session
        and the HMAC then proves it). Then call ``.verify_body(body)``, which checks ``bh`` and records ``ctr``.
        """
        token = parse_authorization(header_value)
        return self._verify_counted(token, peer_id, TYP_REQUEST, "request_key", method, path, cnf)

    def sign_response(self, request: VerifiedToken, body: bytes, cnf: str | None = None) -> str:
        """Answer a verified session request: same direction and kid, "session-response" key, rid = ctr."""
        session = self.store.lookup_inbound(request.iss, request.kid)
        claims = self._claims(request.iss, body, cnf)
        claims["rid"] = request.ctr
        return bearer(encode_token(session.response_key, TYP_RESPONSE, session.kid, claims))

    def verify_response(
        self,
        peer_id: str,
        header_value: bytes | str | None,
        request: SignedRequest,
        body: bytes,
        cnf: str | None = None,
    ) -> VerifiedToken:
        """Verify ``peer_id``'s answer to our ``request`` (same kid, rid = its ctr, bh over ``body``)."""
        token = parse_authorization(header_value)
        header, _ = unverified_parts(token)
        if header.get("kid") != request.kid and not is_cluster_kid(header.get("kid")):
            raise AuthError("unknown_key")

        def key_for(header: Mapping[str, Any], claims: Mapping[str, Any]) -> bytes:
            session = self.store.outbound_for_kid(peer_id, request.kid)
            if session is None:
                raise AuthError("unknown_key")
            return session.response_key

        verified = verify_token(
            token,
            key_for=key_for,
            accept_typs=frozenset({TYP_RESPONSE}),
            cluster=False,
            audience=self.node_id,
            now=self.store.clock.seconds(),
            leeway=self.store.leeway,
            issuer=peer_id,
            counter=None,
            expect_cnf=cnf,
        )
        check_rid(verified, request.rid)
        return PendingToken(verified).verify_body(body)

    def sign_link_hello(self, peer_id: str, body: bytes = b"", cnf: str | None = None) -> SignedRequest:
        """A ``tm-link+jwt`` for opening a data link to ``peer_id`` (outbound kid, next ctr)."""
        session = self._outbound(peer_id)
        ctr = session.next_ctr()
        claims = self._claims(peer_id, body, cnf)
        claims["ctr"] = ctr
        token = encode_token(session.hello_key, TYP_LINK, session.kid, claims)
        return SignedRequest(header_value=bearer(token), kid=session.kid, rid=ctr, peer_id=peer_id)

    def verify_link_hello(
        self, peer_id: str | None, token: bytes | str, body: bytes = b"", cnf: str | None = None
    ) -> VerifiedToken:
        """Verify a link hello (a bare JWT or ``Bearer <jwt>``) and record its ctr.

        The returned token's ``iss``/``kid`` select the frame key:
        ``store.inbound(token.iss, token.kid).frame_key``.
        """
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise AuthError("malformed") from None
        raw = parse_authorization(token) if " " in token.strip() else token.strip()
        if not raw:
            raise AuthError("missing")
        pending = self._verify_counted(raw, peer_id, TYP_LINK, "hello_key", None, None, cnf)
        return pending.verify_body(body)
