"""``Renewal``: re-registering with known peers (session token, cluster-token fallback).

A component of :class:`tunmesh.mesh.membership.Membership` (see there). It owns the renewals in flight
(one per peer) and their backoff; a failed renewal also sets the peer's ``next_attempt``, which the groom
tick reads (``Peer.renewal_due``). A peer that refuses our session token or session setup (401/404: it
forgot us, or another process answers at its URL now) is re-registered through its URL: one bootstrap
that registers us with whoever answers there and says who that is (:meth:`Renewal._through_url`). A
renewal without a session for a reason of ours (the setup backs off) registers with the cluster token
addressed to the peer (:meth:`PeerExchange.post`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from tunmesh.mesh.component import Component
from tunmesh.mesh.errors import MeshError, PeerRequestFailed, SessionRefused
from tunmesh.mesh.exchange import REGISTER_PATH, register_path, retry_after
from tunmesh.mesh.inflight import InFlight

if TYPE_CHECKING:
    from tunmesh.mesh.membership import Membership


class Renewal(Component):
    """Renewals by peer (see module docstring)."""

    log = Logger()

    def __init__(self, membership: Membership) -> None:
        super().__init__(membership)
        #: failed renewals by peer id: the wait before the next one (W7, Retry-After)
        self.backoff = self.peer_backoff()
        self._running: InFlight[str, None] = InFlight()

    def __contains__(self, peer_id: object) -> bool:
        """Whether a renewal with ``peer_id`` is in flight."""
        return peer_id in self._running

    def renew_soon(self, peer_id: str) -> None:
        """Renew with a pool peer now and let it run (our address moved)."""
        if not self.membership.stopped and peer_id in self.pool:
            self.renew(peer_id).addErrback(lambda f: None)

    def answered(self, peer_id: str) -> None:
        """We answered ``peer_id``'s session-authenticated registration with ours: that exchange renewed
        both directions (it holds our registration, we hold its own), so ours to it waits a full interval
        from now. Of the two nodes of a pair only the one whose groom tick comes first renews: one
        exchange per pair per interval instead of two (docs/performance.md, "Scale"). Not before we
        registered with it ourselves once: a request of ours is what acknowledges our address claims
        (docs/addressing.md), and what a cluster-token registration (a bootstrap) is answered with."""
        peer = self.pool.get(peer_id)
        if peer is None or not peer.registered_with or self.membership.sessions.outbound(peer_id) is None:
            return
        if peer_id not in self._running:
            self.exchanged(peer_id)

    def exchanged(self, peer_id: str) -> None:
        """Registrations were exchanged with ``peer_id``, ours as a request of ours: the next renewal is
        due a full interval from now."""
        peer = self.pool.get(peer_id)
        if peer is None:
            return
        peer.last_renewal = self.monotonic()
        peer.registered_with = True

    def renew(self, peer_id: str) -> Deferred[None]:
        """Re-register with a known peer (session auth, cluster fallback); one at a time per peer."""
        if peer_id in self._running:
            return succeed(None)
        d = self._running.start(peer_id, self._renew(peer_id))

        def done(result: Any) -> Any:
            peer = self.pool.get(peer_id)
            if peer is not None:
                if isinstance(result, Failure):
                    delay = self.backoff.failure(peer_id, retry_after(result.value))
                    peer.next_attempt = self.monotonic() + delay
                else:
                    self.backoff.success(peer_id)
                    peer.next_attempt = 0.0
            return result

        d.addBoth(done)
        return d

    @inlineCallbacks
    def _through_url(self, peer_id: str, url: str) -> Any:
        """``peer_id`` refused our session token or session setup: it forgot us (groomed us, lost its
        keys), or another process answers at ``url`` now (a restart, with a new id). One bootstrap of the
        URL tells which, and registers us either way: the same id answers, and the pair is registered
        again; another id answers, and the entry goes (W6: only once its URL answered, authenticated, with
        another id; ``Bootstrapper._bootstrap``). Fires True when the entry went. It used to take a
        cluster-token request addressed to the id we held, refused again after a restart, then this
        bootstrap (the churn of docs/performance.md)."""
        self.log.warn(
            "peer {peer_id} does not know us: re-registering through its URL {url}", peer_id=peer_id, url=url
        )
        answered = yield self.membership.bootstrapper.bootstrap(url)
        if answered == peer_id:
            self.meters.registrations.labels(direction="out", result="fallback").inc()
            return False
        if self.pool.get(peer_id) is None:
            return True
        raise PeerRequestFailed("unknown_peer", f"{url} answered as {answered}, not {peer_id}")

    @inlineCallbacks
    def _renew(self, peer_id: str) -> Any:
        peer = self.pool.get(peer_id)
        if peer is None:
            raise PeerRequestFailed("unknown_peer", peer_id)
        url = peer.url
        refused = False  # the peer refused our session token or setup: its URL is asked instead
        try:
            if self.sessions.outbound(peer_id) is None:
                try:
                    yield self.membership.session_setup.ensure_session(peer_id)
                except MeshError as exc:
                    # refused (it does not know us): through its URL below; our setup is backing off:
                    # register with the cluster token anyway, so a session retry never costs the peer
                    # its renewal
                    if exc.status in (401, 404):
                        refused = True
                    elif exc.reason != "backoff":
                        raise

            def falling_back() -> None:
                self.log.warn(
                    "no session with peer {peer_id}: re-registering with the cluster token", peer_id=peer_id
                )

            if not refused:
                try:
                    response, by_cluster = yield self.exchange.post(
                        peer_id,
                        url,
                        "register",
                        register_path(self.node_id),
                        REGISTER_PATH,
                        lambda: self.membership.our_registration(peer_id).to_json(),
                        session_timeout=self.settings.registration_timeout,
                        falling_back=falling_back,
                        fall_back_when_refused=False,
                    )
                except SessionRefused:
                    refused = True
            if refused:
                replaced = yield self._through_url(peer_id, url)
                if replaced:
                    return None  # the entry is gone; the node at the URL registered with us instead
            else:
                if by_cluster:
                    self.meters.registrations.labels(direction="out", result="fallback").inc()
                if self.pool.get(peer_id) is None:
                    raise PeerRequestFailed("unknown_peer", peer_id)
                self.membership.inbound.accept_registration(peer_id, response.body, direction="out")
        except MeshError as exc:
            self.contacts.peer_failed(peer_id, "register", exc.reason, exc.detail, exc.status)
            if exc.status == 401 and not refused:
                # Its URL did not take a cluster token addressed to it: most likely another process
                # answers there now (a restart, with a new id). Ask the URL who it is, as a claim
                # conflict does (W6: the entry goes only once the URL answers with another id), instead
                # of renewing into 401s until the entry goes stale (docs/api_flows.md).
                self.membership.bootstrapper.probe_holder(peer)
            self._rlog.emit(
                ("renew", peer_id, exc.reason),
                LogLevel.warn,
                "re-registration with {peer_id} failed: {reason} {detail}",
                peer_id=peer_id,
                reason=exc.reason,
                detail=exc.detail,
            )
            raise
        peer = self.pool.get(peer_id)
        if peer is not None:
            peer.last_renewal = self.monotonic()
            peer.registered_with = True
            self.contacts.peer_ok(peer_id)
            if self.sessions.outbound(peer_id) is None:
                self.membership.session_setup.spawn(peer_id)
        return None
