"""``SessionSetup``: our sending direction to each peer: X25519 init or rotation, retries, re-salting.

A component of :class:`tunmesh.mesh.membership.Membership` (see there). It owns the setups in flight
(one per peer, any number of waiters), their backoff and retry timers, and the cluster secret that
salted each outbound session. A new session goes with the cluster token (init); a due one with the
current session token (rotation), falling back to init when the peer refuses it (W11, make-before-break:
the previous key stays valid meanwhile).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from tunmesh.auth.errors import KexError
from tunmesh.auth.kex import KexInitiator
from tunmesh.mesh.component import Component
from tunmesh.mesh.errors import MeshError, PeerRequestFailed
from tunmesh.mesh.exchange import INIT_SESSION_PATH, init_session_path, retry_after
from tunmesh.mesh.inflight import InFlight

if TYPE_CHECKING:
    from tunmesh.mesh.membership import Membership


def session_retry_floor(exc: object, min_interval: float, rotating: bool) -> float:
    """The least wait before the next session setup with a peer after ``exc`` (W11).

    A 429's Retry-After is always honoured. A first setup refused with 401 (the peer has not processed
    our registration yet: two nodes that joined at the same moment) waits only for its backoff: the peer
    refused it before its one-per-``min_interval`` limit. Anything else (a failed rotation, whose current
    key keeps working; no answer, which may have been counted, or may come from a peer too busy to
    answer) waits at least ``min_interval``.
    """
    retry = retry_after(exc)
    if retry > 0:
        return retry
    if not rotating and getattr(exc, "status", None) == 401:
        return 0.0
    return min_interval


class SessionSetup(Component):
    """Outbound session setups by peer (see module docstring)."""

    log = Logger()

    def __init__(self, membership: Membership) -> None:
        super().__init__(membership)
        #: failed setups by peer id: the wait before the next one (W7, W11)
        self.backoff = self.peer_backoff()
        self._running: InFlight[str, None] = InFlight()
        #: peer id -> id of the cluster secret that salted our current outbound session to it
        self.outbound_salt: dict[str, str] = {}

    def __contains__(self, peer_id: object) -> bool:
        """Whether a setup with ``peer_id`` is in flight."""
        return peer_id in self._running

    def spawn(self, peer_id: str) -> None:
        """Start a setup with a pool peer and let it run (its failure schedules the retry)."""
        if not self.membership.stopped and peer_id in self.pool:
            self.ensure_session(peer_id).addErrback(lambda f: None)

    def _schedule(self, peer_id: str, delay: float) -> None:
        """Set up the session to ``peer_id`` again in ``delay`` s (its backoff), not on a later groom tick."""
        if not self.membership.stopped and peer_id in self.pool:
            self.timers.call_within(("session", peer_id), delay, self._retry, peer_id)

    def _retry(self, peer_id: str) -> None:
        wait = self.backoff.wait(peer_id)
        if wait > 0:
            self._schedule(peer_id, wait)  # the reactor clock ran ahead of the monotonic one
        else:
            self.spawn(peer_id)

    def forget(self, peer_id: str) -> None:
        """``peer_id`` left the pool: drop its salt, backoff and retry timer."""
        self.outbound_salt.pop(peer_id, None)
        self.backoff.success(peer_id)
        self.timers.cancel(("session", peer_id))

    def ensure_session(self, peer_id: str, force: bool = False) -> Deferred[None]:
        """Make sure we have a current outbound session to ``peer_id`` (init, or rotation when due, or now
        with ``force``)."""
        if not force and not self.sessions.needs_rotation(peer_id):
            return succeed(None)
        running = self._running.follow(peer_id)
        if running is not None:
            return running
        if not self.backoff.allowed(peer_id):
            return fail(PeerRequestFailed("backoff", peer_id))
        op = self._running.start(peer_id, self._setup(peer_id))

        def done(result: Any) -> Any:
            if isinstance(result, Failure):
                rotating = self.sessions.outbound(peer_id) is not None
                floor = session_retry_floor(result.value, self.settings.init_session_min_interval, rotating)
                self._schedule(peer_id, self.backoff.failure(peer_id, floor))
            else:
                self.backoff.success(peer_id)
            return result

        op.addBoth(done)
        return op

    @inlineCallbacks
    def _setup(self, peer_id: str) -> Any:
        peer = self.pool.get(peer_id)
        if peer is None:
            raise PeerRequestFailed("unknown_peer", peer_id)
        current = self.sessions.outbound(peer_id)
        kind = "rotate" if current is not None else "init"
        started = self.monotonic()
        initiator: KexInitiator | None = None

        def kex_body() -> bytes:
            nonlocal initiator
            initiator = self._kex_initiator(peer_id)
            return initiator.request_body()

        def refused() -> None:
            nonlocal kind
            self.meters.session_setups.labels(kind=kind, result="refused").inc()
            kind = "init"

        try:
            response, _ = yield self.exchange.post(
                peer_id,
                peer.url,
                "init_session",
                init_session_path(self.node_id),
                INIT_SESSION_PATH,
                kex_body,
                refused=refused,
            )
            assert initiator is not None
            kid, secret = initiator.complete(response.body)
        except (MeshError, KexError) as exc:
            reason = exc.reason
            self.meters.session_setups.labels(kind=kind, result=reason).inc()
            self.contacts.peer_failed(peer_id, "session", reason, str(exc), getattr(exc, "status", 0))
            self.meters.session_seconds.labels(kind=kind, result=reason).observe(self.monotonic() - started)
            self._rlog.emit(
                ("session", peer_id, reason),
                LogLevel.warn if kind == "init" else LogLevel.error,
                "session {kind} with {peer_id} failed: {reason} {detail}; the previous key stays in use",
                kind=kind,
                peer_id=peer_id,
                reason=reason,
                detail=getattr(exc, "detail", ""),
            )
            raise
        if peer_id not in self.pool:
            raise PeerRequestFailed("unknown_peer", peer_id)
        self.sessions.install_outbound(peer_id, kid, secret)
        self.outbound_salt[peer_id] = initiator.request.secret_id
        self.pool.touch(peer_id)
        self.contacts.peer_ok(peer_id)
        self.meters.session_setups.labels(kind=kind, result="ok").inc()
        self.meters.session_seconds.labels(kind=kind, result="ok").observe(self.monotonic() - started)
        return None

    def _kex_initiator(self, peer_id: str) -> KexInitiator:
        """A new session is salted with this node's signing secret, and the request names it."""
        signing = self.cluster.signing_id
        return KexInitiator(self.cluster.kex_key_for(signing), self.node_id, peer_id, secret_id=signing)

    def cluster_secrets_changed(self) -> list[str]:
        """The accepted cluster secrets changed (reload): rotate now every outbound session that was
        salted with a secret this node no longer accepts, so none outlives the secret's removal by
        more than one exchange. Rotation is make-before-break (W11). Returns the peers rotated."""
        accepted = set(self.cluster.secret_ids)
        stale = [
            peer_id
            for peer_id, salt in list(self.outbound_salt.items())
            if salt not in accepted and peer_id in self.pool and self.sessions.outbound(peer_id) is not None
        ]
        for peer_id in stale:
            self.clock.callLater(0, self._resalt, peer_id)
        return stale

    def _resalt(self, peer_id: str) -> None:
        if self.membership.stopped or peer_id not in self.pool:
            return
        if self.outbound_salt.get(peer_id) in set(self.cluster.secret_ids):
            return  # already rotated (hourly, or a restart of the peer)

        def retry(failure: Failure) -> None:
            # A refused rotation (429 right after another exchange, a peer briefly away): try again
            # once the per-peer interval has passed, while the salt is still one we no longer accept.
            self.clock.callLater(self.settings.init_session_min_interval, self._resalt, peer_id)

        self.ensure_session(peer_id, force=True).addErrback(retry)
