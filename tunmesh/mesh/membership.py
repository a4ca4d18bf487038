"""``Membership``: one node's view of the mesh, as a coordinator of small components.

In the shape of magic-wormhole's ``_boss.py``: ``Membership`` owns the node pool, the observers, readiness
and the groom tick, and wires components that each own one piece of state:

* ``Inbound`` (``inbound``): registrations, session inits and leaves that peers send us (``MeshAPI``
  calls it once the token verified); dynamic address claims are decided there;
* ``Bootstrapper`` (``bootstrapper``): bootstrap groups, URL backoff, config reload before a pass,
  gossip, and the join pass that runs outside the groom tick (docs/api_flows.md, "Join timing");
* ``SessionSetup`` (``session_setup``): X25519 init (cluster token) or rotation (session token) of OUR
  sending direction to each peer, make-before-break (W11), and re-salting after a secret reload;
* ``Renewal`` (``renewal``): session-authenticated re-registration, falling back to the cluster token
  when the peer answers 401/404 (it forgot us);
* ``Leave`` (``leaving``): telling our peers that we leave (service stop).

They share ``PeerExchange`` (``exchange``: signed requests and the checks of answers, W4),
``MembershipMetrics`` (``meters``), the ``ContactLog`` (``contacts``) and one ``KeyedTimers`` (``timers``),
and reach the pool and each other through the coordinator. ``groom()`` is one tick: bootstrap groups,
renewals, rotations, gossip bootstraps, stale removal; it starts operations and never waits for them,
so one slow peer cannot hold up the loop.

Observers get ``peer_up(peer_id, url, cidrs)`` when a peer's own authenticated registration installs or
changes its routes, and ``peer_down(peer_id)`` when it is removed (stale, replaced, restarted, left).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from tunmesh.auth.cluster import ClusterAuthority, ClusterKeyring
from tunmesh.auth.errors import AuthError
from tunmesh.auth.sessions import SessionAuthority, SessionStore
from tunmesh.auth.tokens import VerifiedToken, secret_id_of_kid
from tunmesh.interfaces import PeerObserver
from tunmesh.logutil import RateLimitedLog
from tunmesh.mesh.addressing import AddressClaimer
from tunmesh.mesh.bootstrap import Bootstrapper
from tunmesh.mesh.client import MeshClient
from tunmesh.mesh.contacts import ContactLog
from tunmesh.mesh.exchange import PeerExchange
from tunmesh.mesh.gossip import GossipDigests, holds_entries
from tunmesh.mesh.inbound import Inbound
from tunmesh.mesh.leave import LEAVE_TIMEOUT, Leave
from tunmesh.mesh.meters import MembershipMetrics
from tunmesh.mesh.pool import NodePool, Peer
from tunmesh.mesh.renewal import Renewal
from tunmesh.mesh.session_setup import SessionSetup
from tunmesh.mesh.settings import BootstrapGroupSpec, MeshSettings
from tunmesh.mesh.structs import IPInterface, Registration
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
        self.gossip = GossipDigests()
        self.timers = KeyedTimers(clock)
        self._observers: list[PeerObserver] = []
        self._seq = 0
        self._registered_once = False
        self._stopped = False
        self._started = self.monotonic()
        self._grace_over_logged = False
        self.last_groom: float | None = None
        #: seconds since the peer's packet link last carried a frame from it (TLS-bound to the link's
        #: authenticated HELLO), None when the link is not up: the data plane's ``link_age``, set by
        #: ``makeService``. Such a frame is authenticated contact, and lets renewals relax (groom).
        self.link_age: Callable[[str], float | None] = lambda peer_id: None
        #: last failures per peer and URL, removals, inbound refusals (``tunmesh status``)
        self.contacts = ContactLog(self.monotonic)
        self._rlog = RateLimitedLog(self.log, clock)
        self.metrics = metrics
        self.meters = MembershipMetrics(metrics)
        self.meters.show_cluster_secrets(cluster)
        # Read when scraped: counting the sessions is O(N), and was done after every registration.
        self.meters.peers.set_function(lambda: len(self.pool))
        self.meters.sessions.set_function(self.session_count)
        self.session_setup = SessionSetup(self)
        self.renewal = Renewal(self)
        self.bootstrapper = Bootstrapper(self, reload)
        self.inbound = Inbound(self)
        self.leaving = Leave(self)
        self.addressing = addressing
        if addressing is not None:
            self._addresses_changed(addressing.addresses())
            addressing.add_observer(self._addresses_changed)

    # -- auth reports ---------------------------------------------------------------------------------

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

    def session_count(self) -> int:
        """Peers we hold a usable outbound session with (the ``mesh_sessions`` gauge)."""
        outbound = self.sessions.outbound
        return sum(1 for p in self.pool if outbound(p.id) is not None)

    @property
    def stopped(self) -> bool:
        """Whether the node stops (``cancel_all``): scheduled follow-ups become no-ops."""
        return self._stopped

    # -- observers and readiness ------------------------------------------------------------------

    def add_observer(self, observer: PeerObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: PeerObserver) -> None:
        self._observers.remove(observer)

    def notify_up(self, peer: Peer) -> None:
        """Tell the observers a peer's routes were installed or changed."""
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

    def joined(self) -> None:
        """A registration was exchanged with a peer: ready from now on."""
        self._registered_once = True

    def ready(self) -> bool:
        """True once a registration was exchanged with a peer, or when nothing is configured to join,
        or during ``startup_grace`` after start (the first node of a cluster whose bootstrap URL is a
        load balancer that only routes to ready pods would otherwise never become ready)."""
        if self._registered_once or not self.bootstrap_urls():
            return True
        return self.monotonic() - self._started < self.settings.startup_grace

    def _check_grace(self) -> None:
        """One WARN when a startup grace has run out before we joined (``ready`` turned false)."""
        grace = self.settings.startup_grace
        if grace <= 0 or self._grace_over_logged or self.ready():
            return
        self._grace_over_logged = True
        self.log.warn(
            "startup grace of {grace}s is over and no peer has registered with us: not ready",
            grace=grace,
        )

    # -- our registration -------------------------------------------------------------------------

    def our_registration(self, recipient: str | None = None) -> Registration:
        """What we send: ourselves, the live peers we know (hints for the receiver, left out when
        ``recipient`` holds them already: :mod:`tunmesh.mesh.gossip`), stamp, seq."""
        self._seq += 1
        now = self.monotonic()
        remote = tuple(p.info for p in self.pool if not p.is_stale(now))
        registration = self.gossip.outgoing(Registration(self.local, remote, int(self._wall()), self._seq), recipient)
        if recipient is not None:
            self.gossip.sent(recipient, registration, now)
        return registration

    def defended(self) -> Mapping[str, IPInterface]:
        """The addresses this node holds against claimants: claimed ones, else the configured ones."""
        return self.addressing.defended() if self.addressing is not None else self.local.node_addresses

    def _addresses_changed(self, addresses: Mapping[str, IPInterface]) -> None:
        """Our address moved: registrations carry it from now on, and every peer hears it at once."""
        assert self.addressing is not None
        self.local = replace(self.local, node_addresses=dict(addresses), claims=self.addressing.claims())
        self.pool.set_own_addresses(self.defended().values())
        for peer in self.pool:
            peer.last_renewal = None
            peer.next_attempt = 0.0
            self.clock.callLater(0, self.renewal.renew_soon, peer.id)

    def touch(self, peer_id: str) -> None:
        """Authenticated contact from ``peer_id`` (any verified request or response)."""
        self.pool.touch(peer_id)

    def set_cluster_keyring(self, keyring: ClusterKeyring) -> None:
        """Accept the cluster secrets of ``keyring`` from now on (SIGHUP), sign with its signing id, and
        re-salt the sessions that rested on a secret no longer accepted."""
        self.cluster.set_keyring(keyring)
        self.meters.show_cluster_secrets(self.cluster)
        rotated = self.session_setup.cluster_secrets_changed()
        if rotated:
            self.log.info(
                "rotating {count} outbound session(s) salted with a cluster secret no longer accepted",
                count=len(rotated),
            )

    # -- removal -----------------------------------------------------------------------------------

    def teardown(self, peer: Peer, reason: str) -> None:
        """Remove a peer and everything that refers to it: routes (observers), sessions, pending ops."""
        self.pool.remove(peer.id)
        self.gossip.forget(peer.id)
        self.contacts.peer_removed(peer.id, peer.info.name, peer.url, reason)
        self.sessions.forget(peer.id)
        self.session_setup.forget(peer.id)
        self.renewal.backoff.success(peer.id)
        self.bootstrapper.forget(peer.id)
        self._notify_down(peer.id)
        self.meters.removed.labels(reason=reason).inc()

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
            live = [p for p in self.pool if not p.is_stale(now)]
            ours = self.gossip.digest(tuple(p.info for p in live))
            # Members that joined less than a stale_threshold ago are registering with every node
            # themselves (a newcomer contacts every node its bootstrap answer names): telling a peer
            # about them is news only once they were here that long and its table still lacks them.
            settled = tuple(p.info for p in live if now - p.first_seen >= p.timing.stale_threshold)
            for peer in self.pool:
                link_age = self.link_age(peer.id)
                if link_age is not None:
                    self.pool.touch(peer.id, link_age)
                if peer.is_stale(now):
                    continue
                if self.bootstrapper.asking(peer.url):
                    # Its URL is being asked who answers there (a probe after a refusal, or a bootstrap):
                    # a renewal or session setup with the id we hold would only add requests, to a node
                    # that may be another process now, before that answer (the churn of docs/performance.md).
                    continue
                # A link with it proves it alive to both of us (frames either way are authenticated
                # contact). If it holds our table, or every settled entry of it (the table it last sent us
                # names them all, as we hold them; newer members reach it first-hand), a renewal would be
                # news to nobody: a pair with a link up then exchanges once per REST_RENEWAL
                # stale_thresholds, a safety net only. If it got our table, or a delta of
                # it, less than a stale_threshold ago, the membership is changing (a join of many nodes,
                # whose newcomers register with every node themselves): a pair exchanges once per
                # stale_threshold, link or not, not after every change; the first news after a quiet
                # spell still goes at once. A peer whose last contact is half a stale_threshold old is
                # renewed at the usual interval regardless (``Peer.renewal_due``).
                rest = link_age is not None and (
                    self.gossip.holds(peer.id, ours) or holds_entries(settled, peer.hints, peer.id)
                )
                relaxed = self.gossip.told_within(peer.id, now, peer.timing.stale_threshold)
                if peer.renewal_due(now, relaxed, rest) and peer.id not in self.renewal:
                    self.renewal.renew(peer.id).addErrback(lambda f: None)
                # Not an ``elif``: with renewals due at every tick (reregistration_interval <= groom_interval)
                # a due rotation would wait for a tick without one, and the session outlive its age.
                if self.sessions.needs_rotation(peer.id) and peer.id not in self.session_setup:
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
