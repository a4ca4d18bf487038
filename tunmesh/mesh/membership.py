"""`Membership`: the mesh's state machine: registrations in and out, sessions, gossip, grooming.

Inbound (called by `MeshAPI` after the token verified): `accept_registration`, `accept_init_session`.
Outbound flows (Deferreds, each bounded by the client's request timeout):

* `bootstrap(url)`: cluster registration with a bootstrap token to a URL that may be a load balancer;
  only the signed answer says who answered and at which URL it is reached afterwards (W4);
* `ensure_session(peer_id)`: X25519 init (cluster token) or rotation (session token) for OUR sending
  direction to the peer; the previous key stays valid meanwhile (make-before-break, W11);
* `renew(peer_id)`: session-authenticated re-registration, falling back to a cluster registration when
  the peer answers 401/404 (it forgot us);
* `groom()`: one tick: bootstrap groups, renewals, rotations, gossip bootstraps, stale removal. It starts
  operations and never waits for them, so one slow peer cannot hold up the loop.

Joining does not wait for groom ticks (docs/api_flows.md, "Join timing"): a bootstrap group that failed is
retried on its own timer (0.5 s doubling to `bootstrap_retry_interval`, jittered, never before its URLs'
W7 backoff allows), new gossip hints are bootstrapped at once, and a failed session setup is retried when
its backoff ends. All these timers live in one `KeyedTimers`.

Observers get `peer_up(peer_id, url, cidrs)` when a peer's own authenticated registration installs or
changes its routes, and `peer_down(peer_id)` when it is removed (stale, replaced, restarted).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.defer import (
    Deferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from tunmesh.auth.cluster import ClusterAuthority, ClusterKeyring
from tunmesh.auth.errors import AuthError, KexError
from tunmesh.auth.kex import KexRequest, respond
from tunmesh.auth.sessions import SessionAuthority, SessionStore
from tunmesh.auth.tokens import (
    VerifiedToken,
    is_cluster_kid,
    secret_id_of_kid,
)
from tunmesh.interfaces import PeerObserver
from tunmesh.logutil import RateLimitedLog
from tunmesh.mesh.addressing import AddressClaimer, Verdict
from tunmesh.mesh.bootstrap import Bootstrapper, peer_url_allowed
from tunmesh.mesh.client import MeshClient
from tunmesh.mesh.contacts import ContactLog
from tunmesh.mesh.errors import (
    InvalidRegistration,
    MeshError,
    RegistrationConflict,
    SelfRegistration,
    Stopping,
)
from tunmesh.mesh.exchange import (
    PeerExchange,
    leave_body,
)
from tunmesh.mesh.leave import LEAVE_TIMEOUT, Leave
from tunmesh.mesh.meters import MembershipMetrics
from tunmesh.mesh.pool import ClaimConflict, NodePool, Peer
from tunmesh.mesh.renewal import Renewal
from tunmesh.mesh.session_setup import SessionSetup
from tunmesh.mesh.settings import BootstrapGroupSpec, MeshSettings
from tunmesh.mesh.structs import IPInterface, NodeInfo, Registration
from tunmesh.mesh.timers import KeyedTimers
from tunmesh.names import label


class Membership:
    """Peers, registrations and sessions of one node (see module docstring)."""

    log = Logger()

    def __init__(
        self,
        settings: MeshSettings,
        node_id: str,
        cluster: ClusterAuthority,
        sessions: SessionStore,
        client: MeshClient,
        clock: IReactorTime,
        metrics: Any,
        monotonic: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        reload: Callable[[], Sequence[BootstrapGroupSpec]] | None = None,
        addressing: AddressClaimer | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = node_id
        self.cluster = cluster
        self.sessions = sessions
        self.session_auth = SessionAuthority(sessions)
        self.client = client
        self.exchange = PeerExchange(settings, cluster, sessions, self.session_auth, client, self.auth_failed)
        self.clock = clock
        #: the clock of ages, backoffs and staleness (reactor time unless a monotonic clock is given)
        self.monotonic = monotonic or clock.seconds
        self._wall = wall
        #: the jitter of every backoff
        self.rng = rng or random.SystemRandom()
        self.local = settings.local_info(node_id)
        self.pool = NodePool(settings, node_id, self.monotonic)
        self.timers = KeyedTimers(clock)
        self._observers: list[PeerObserver] = []
        self.leaving = Leave(self)
        self._seq = 0
        self._registered_once = False
        self._stopped = False
        self._started = self.monotonic()
        self._grace_over_logged = False
        self.last_groom: float | None = None
        #: last failures per peer and URL, removals, inbound refusals (``tunmesh status``)
        self.contacts = ContactLog(self.monotonic)
        self._rlog = RateLimitedLog(self.log, clock)
        self.metrics = metrics
        self.meters = MembershipMetrics(metrics)
        self.meters.show_cluster_secrets(cluster)
        self.session_setup = SessionSetup(self)
        self.renewal = Renewal(self)
        self.bootstrapper = Bootstrapper(self, reload)
        self.addressing = addressing
        if addressing is not None:
            self._addresses_changed(addressing.addresses())
            addressing.add_observer(self._addresses_changed)

    # -- auth reports ------------------------------------------------------------------------------------

    def cluster_token_accepted(self, token: VerifiedToken) -> None:
        """Count an accepted cluster-signed request by the secret id its ``kid`` named."""
        secret_id = secret_id_of_kid(token.kid)
        if secret_id is not None:
            self.meters.cluster_tokens.labels(secret_id=secret_id).inc()

    def auth_failed(self, error: AuthError, where: str) -> None:
        """Count an auth failure and log it rate-limited (never the token); time refusals say the skew."""
        reason = error.reason
        self.meters.auth_failures.labels(reason=reason).inc()
        self.contacts.inbound_refused(reason, where)
        if error.skew is not None:
            self._rlog.emit(
                ("auth", reason, where),
                LogLevel.warn,
                "authentication failed on {where}: {reason}: the sender's token was issued {skew:+.1f}s "
                "from this node's clock (leeway {leeway}s); check NTP on both nodes",
                where=where,
                reason=reason,
                skew=error.skew,
                leeway=self.cluster.leeway,
            )
            return
        if error.secret_id is not None:
            self._rlog.emit(
                ("auth", reason, where),
                LogLevel.warn,
                "authentication failed on {where}: {reason}: the peer uses cluster secret id {secret_id!r}, "
                "which this node does not accept (it accepts {accepted}); a step of the secret rotation "
                "was skipped or not done everywhere (docs/security.md, Rotating the cluster secret)",
                where=where,
                reason=reason,
                secret_id=error.secret_id,
                accepted=", ".join(self.cluster.secret_ids),
            )
            return
        self._rlog.emit(
            ("auth", reason, where),
            LogLevel.warn,
            "authentication failed on {where}: {reason}",
            where=where,
            reason=reason,
        )

    def update_gauges(self) -> None:
        self.meters.peers.set(len(self.pool))
        self.meters.sessions.set(sum(1 for p in self.pool if self.sessions.outbound(p.id) is not None))

    @property
    def stopped(self) -> bool:
        """Whether the node stops (`cancel_all`): scheduled follow-ups become no-ops."""
        return self._stopped

    # -- observers and readiness ------------------------------------------------------------------

    def add_observer(self, observer: PeerObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: PeerObserver) -> None:
        self._observers.remove(observer)

    def _notify_up(self, peer: Peer) -> None:
        for observer in list(self._observers):
            try:
                observer.peer_up(peer.id, peer.url, peer.routes)
            except Exception:
                self.log.failure("peer_up observer failed for {peer_id}", peer_id=peer.id)

    def _notify_down(self, peer_id: str) -> None:
        for observer in list(self._observers):
            try:
                observer.peer_down(peer_id)
            except Exception:
                self.log.failure("peer_down observer failed for {peer_id}", peer_id=peer_id)

    def bootstrap_urls(self) -> list[str]:
        return self.bootstrapper.urls()

    def set_bootstrap_groups(self, specs: Sequence[BootstrapGroupSpec]) -> bool:
        """Use ``specs`` from the next bootstrap pass on (SIGHUP): :meth:`Bootstrapper.set_groups`."""
        return self.bootstrapper.set_groups(specs)

    def ready(self) -> bool:
        """True once a registration was exchanged with a peer, or when nothing is configured to join,
        or during `startup_grace` after start (the first node of a cluster whose bootstrap URL is a
        load balancer that only routes to ready pods would otherwise never become ready)."""
        if self._registered_once or not self.bootstrap_urls():
            return True
        return self.monotonic() - self._started < self.settings.startup_grace

    def _check_grace(self) -> None:
        """One WARN when a startup grace has run out before we joined (`ready` turned false)."""
        grace = self.settings.startup_grace
        if grace <= 0 or self._grace_over_logged or self.ready():
            return
        self._grace_over_logged = True
        self.log.warn(
            "startup grace of {grace}s is over and no peer has registered with us: not ready",
            grace=grace,
        )

    # -- our registration -------------------------------------------------------------------------

    def our_registration(self) -> Registration:
        """What we send: ourselves, the live peers we know (hints for the receiver), stamp, seq."""
        self._seq += 1
        now = self.monotonic()
        remote = tuple(p.info for p in self.pool if not p.is_stale(now))
        return Registration(self.local, remote, int(self._wall()), self._seq)

    # -- inbound ------------------------------------------------------------------------------------

    def _count_dropped_gossip(self, registration: Registration, iss: str) -> None:
        for reason in registration.dropped:
            self.meters.gossip_dropped.labels(reason=reason).inc()
        if registration.dropped:
            self._rlog.emit(
                ("gossip_dropped", iss),
                LogLevel.info,
                "registration from {iss}: {count} gossip entries dropped ({reasons})",
                iss=iss,
                count=len(registration.dropped),
                reasons=",".join(sorted(set(registration.dropped))),
            )

    def accept_registration(self, iss: str, body: bytes, direction: str = "in") -> tuple[Registration, Peer]:
        """Process a registration whose token verified with issuer `iss`.

        Raises `MeshError` subclasses (400/409/421/503). Only `local` (the issuer itself) can install
        routes; `remote` entries are stored as hints for gossip (W6).
        """
        try:
            if self.stopped:
                # We told our peers we leave: do not let a late gossip hint re-admit us.
                raise Stopping("stopping", "node is shutting down")
            registration = Registration.from_json(body, self.settings.bounds)
            if registration.local.id == self.node_id:
                raise SelfRegistration("self", "registration from our own id")
            if registration.local.id != iss:
                raise InvalidRegistration("issuer_mismatch", f"iss {iss} registered {registration.local.id}")
            if not peer_url_allowed(registration.local.listen_url, self.settings.peer_networks):
                raise InvalidRegistration("url_not_allowed", registration.local.listen_url)
            moved = self._resolve_address_claims(registration.local)
            result = self.pool.upsert(registration.local, registration.seq, registration.remote)
            self._count_dropped_gossip(registration, iss)
        except ClaimConflict as exc:
            self.meters.registrations.labels(direction=direction, result=exc.reason).inc()
            self.log.warn(
                "registration conflict: {detail} (holder {holder}, claimant {claimant})",
                detail=exc.detail,
                holder=exc.holder.id,
                claimant=iss,
            )
            self.bootstrapper.probe_holder(exc.holder)
            if registration.local.claims:
                # A dynamic claimant cannot see the holder through us: send it our registration, whose
                # hints name the holder, so it meets the holder and the rule decides (docs/addressing.md).
                self.clock.callLater(0, self.bootstrapper.probe_url, registration.local.listen_url)
            raise
        except MeshError as exc:
            self.meters.registrations.labels(direction=direction, result=exc.reason).inc()
            level = LogLevel.info if isinstance(exc, SelfRegistration) else LogLevel.warn
            self._rlog.emit(
                ("registration", exc.reason, iss),
                level,
                "registration {direction} from {iss} refused: {reason} {detail}",
                direction=direction,
                iss=iss,
                reason=exc.reason,
                detail=exc.detail,
            )
            raise
        for old in result.replaced:
            self.log.warn(
                "peer {old} replaced by {new} (restart or stale holder of its URL/addresses)",
                old=label(old.info.name, old.id),
                new=label(result.peer.info.name, result.peer.id),
                peer_id=old.id,
                peer_name=old.info.name,
            )
            self.teardown(old, "replaced")
        self.meters.registrations.labels(direction=direction, result="ok").inc()
        self._registered_once = True
        if direction == "out" and self.addressing is not None and not moved:
            self.addressing.acknowledged()  # the peer accepted a registration carrying our (current) claims
        peer = result.peer
        if result.created:
            self.log.info(
                "peer {peer} registered at {url} ({peer_class})",
                peer=label(peer.info.name, peer.id),
                peer_id=peer.id,
                peer_name=peer.info.name,
                url=peer.url,
                peer_class=peer.peer_class,
            )
            # Set up our sending direction soon, outside this request (the peer may not know us yet).
            self.clock.callLater(0, self.session_setup.spawn, peer.id)
        if result.changed:
            self._notify_up(peer)
        if self.bootstrapper.has_new_hints(registration.remote):
            self.bootstrapper.schedule_join(0.0)
        self.update_gauges()
        return registration, peer

    def accept_init_session(self, token: VerifiedToken, body: bytes) -> tuple[bytes, Callable[[], None]]:
        """Answer an init_session from `token.iss` (the future sender); rate limited per peer (W11).

        Returns the response body and a `commit` to call after the response was signed (it installs
        the new inbound key, so the current one becomes `previous`). Raises AuthError (401/429) or
        KexError (400).
        """
        peer_id = token.iss
        kind = "init" if is_cluster_kid(token.kid) else "rotate"
        if peer_id not in self.pool:
            raise AuthError("unknown_peer")
        try:
            request = KexRequest.from_body(body)  # a malformed body is a 400 and does not use up the peer's turn
            # The salt is the cluster secret the requester names (its signing secret); one this node does
            # not accept is refused before the rate limit, as a token under an unknown secret id would be.
            kex_key = self.cluster.kex_key_for(request.secret_id)
            self.sessions.inbound_rate_limit(peer_id)
            result = respond(kex_key, body, sender=peer_id, receiver=self.node_id)
        except (AuthError, KexError) as exc:
            self.meters.inbound_sessions.labels(kind=kind, result=exc.reason).inc()
            raise
        self.pool.touch(peer_id)

        def commit() -> None:
            self.sessions.install_inbound(peer_id, result.kid, result.secret)
            self.meters.inbound_sessions.labels(kind=kind, result="ok").inc()

        return result.body, commit

    # -- dynamic addressing (docs/addressing.md) ------------------------------------------------------

    def _resolve_address_claims(self, info: NodeInfo) -> bool:
        """Apply the claim rule when ``info`` claims one of our dynamic addresses.

        We lose: we have moved (observers ran; returns True), or have nowhere to go (exhausted, not ready),
        and the registration goes on. We keep it: 409, and the other node gets our registration so it sees
        the older claim and moves.
        """
        verdict = Verdict.NO_CONFLICT
        if self.addressing is not None:
            verdict = self.addressing.resolve(info, self.pool.taken())
            if verdict is Verdict.WE_KEEP:
                self.clock.callLater(0, self.bootstrapper.probe_url, info.listen_url)
                raise RegistrationConflict("address_claim", f"{info.id} claims our address, our claim is older")
        own = {iface.ip for iface in self._defended().values()}
        if info.claims and any(iface.ip in own for iface in info.node_addresses.values()):
            # A configured address always wins; show the dynamic claimant our registration so it moves.
            self.clock.callLater(0, self.bootstrapper.probe_url, info.listen_url)
            raise RegistrationConflict("address_claim", f"{info.id} claims our configured address")
        return verdict is not Verdict.NO_CONFLICT

    def _defended(self) -> Mapping[str, IPInterface]:
        return self.addressing.defended() if self.addressing is not None else self.local.node_addresses

    def _addresses_changed(self, addresses: Mapping[str, IPInterface]) -> None:
        """Our address moved: registrations carry it from now on, and every peer hears it at once."""
        assert self.addressing is not None
        self.local = replace(self.local, node_addresses=dict(addresses), claims=self.addressing.claims())
        self.pool.set_own_addresses(self._defended().values())
        for peer in self.pool:
            peer.last_renewal = None
            peer.next_attempt = 0.0
            self.clock.callLater(0, self.renewal.renew_soon, peer.id)

    def touch(self, peer_id: str) -> None:
        """Authenticated contact from `peer_id` (any verified request or response)."""
        self.pool.touch(peer_id)

    def set_cluster_keyring(self, keyring: ClusterKeyring) -> None:
        """Accept the cluster secrets of `keyring` from now on (SIGHUP), sign with its signing id, and
        re-salt the sessions that rested on a secret no longer accepted."""
        self.cluster.set_keyring(keyring)
        self.meters.show_cluster_secrets(self.cluster)
        rotated = self.session_setup.cluster_secrets_changed()
        if rotated:
            self.log.info(
                "rotating {count} outbound session(s) salted with a cluster secret no longer accepted",
                count=len(rotated),
            )

    # -- outbound renewal ---------------------------------------------------------------------------

    # -- removal -----------------------------------------------------------------------------------

    def teardown(self, peer: Peer, reason: str) -> None:
        """Remove a peer and everything that refers to it: routes (observers), sessions, pending ops."""
        self.pool.remove(peer.id)
        self.contacts.peer_removed(peer.id, peer.info.name, peer.url, reason)
        self.sessions.forget(peer.id)
        self.session_setup.forget(peer.id)
        self.renewal.backoff.success(peer.id)
        self.bootstrapper.forget(peer.id)
        self._notify_down(peer.id)
        self.meters.removed.labels(reason=reason).inc()
        self.update_gauges()

    def accept_leave(self, iss: str, body: bytes) -> Callable[[], None]:
        """`iss` (verified by its session token) announces that it shuts down.

        Returns the `commit` that removes it (to call once the response is signed: removal
        forgets the session that signs it), now instead of after `stale_threshold`, so its
        addresses are free for its successor at once.
        """
        if body != leave_body(iss):
            raise InvalidRegistration("bad_leave", "leave body does not name the issuer")

        def commit() -> None:
            peer = self.pool.get(iss)
            name = peer.info.name if peer is not None else None
            if self.remove_peer(iss, "left"):
                self.log.info("peer {peer} left the mesh", peer=label(name, iss), peer_id=iss, peer_name=name)

        return commit

    def leave(self, timeout: float = LEAVE_TIMEOUT) -> Deferred[int]:
        """Tell our peers that we leave (service stop): :meth:`Leave.leave`."""
        return self.leaving.leave(timeout)

    def remove_peer(self, peer_id: str, reason: str) -> bool:
        peer = self.pool.get(peer_id)
        if peer is None:
            return False
        self.teardown(peer, reason)
        return True

    # -- grooming ------------------------------------------------------------------------------------

    def groom(self) -> None:
        """One groom tick; starts operations and returns without waiting for them."""
        self._stopped = False
        self.last_groom = self.monotonic()
        try:
            self._check_grace()
            if self.addressing is not None:
                if not self.bootstrap_urls():
                    self.addressing.acknowledged()  # nothing to join: the first node holds its claim
                self.addressing.tick(alone=len(self.pool) == 0, taken=self.pool.taken(hints=False))
            self.bootstrapper.run_groups()
            now = self.monotonic()
            for peer in self.pool:
                if peer.is_stale(now):
                    continue
                if peer.renewal_due(now) and peer.id not in self.renewal:
                    self.renewal.renew(peer.id).addErrback(lambda f: None)
                elif self.sessions.needs_rotation(peer.id) and peer.id not in self.session_setup:
                    self.session_setup.spawn(peer.id)
            self.bootstrapper.gossip()
            for peer in self.pool.stale():
                self.log.warn(
                    "removing stale peer {peer}: no authenticated contact for {age:.1f}s",
                    peer=label(peer.info.name, peer.id),
                    peer_id=peer.id,
                    peer_name=peer.info.name,
                    age=peer.age(self.monotonic()),
                )
                self.teardown(peer, "stale")
            self.bootstrapper.url_backoff.prune()
            self.update_gauges()
        except Exception:
            self.log.failure("groom tick failed")

    def since_last_groom(self) -> float | None:
        """Seconds since the last groom tick began (None before the first)."""
        return None if self.last_groom is None else self.monotonic() - self.last_groom

    def clock_stepped(self, step: float) -> None:
        """This host's wall clock stepped (``ClockStepWatch``): requests refused while our tokens were off
        by the step (``clock_skew`` at the peers) may succeed now, so forget their backoff and retry at
        once instead of waiting out a backoff grown while the clock was wrong (issue 13)."""
        if self.stopped:
            return
        self.bootstrapper.clock_stepped()
        self.renewal.backoff.reset()
        self.session_setup.backoff.reset()
        for peer in self.pool:
            peer.failures, peer.next_attempt = 0, 0.0
        self.log.info("wall clock stepped by {step:+.1f}s: retrying peers and bootstrap URLs now", step=step)
        self.clock.callLater(0, self.groom)

    def cancel_all(self) -> None:
        """Stop everything in flight (service stop); scheduled follow-ups become no-ops."""
        self._stopped = True
        self.timers.cancel_all()
        self.client.cancel_all()
