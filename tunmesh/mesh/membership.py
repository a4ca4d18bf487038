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
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    TimeoutError,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from tunmesh.auth.cluster import ClusterAuthority, ClusterKeyring
from tunmesh.auth.errors import AuthError, KexError
from tunmesh.auth.kex import KexInitiator, KexRequest, respond
from tunmesh.auth.sessions import SessionAuthority, SessionStore
from tunmesh.auth.tokens import (
    TYP_BOOTSTRAP,
    TYP_REQUEST,
    SignedRequest,
    VerifiedToken,
    is_cluster_kid,
    secret_id_of_kid,
)
from tunmesh.interfaces import PeerObserver
from tunmesh.logutil import RateLimitedLog
from tunmesh.mesh.addressing import AddressClaimer, Verdict
from tunmesh.mesh.backoff import Backoff
from tunmesh.mesh.client import MeshClient, RawResponse
from tunmesh.mesh.contacts import ContactLog
from tunmesh.mesh.errors import (
    InvalidRegistration,
    MeshError,
    PeerRequestFailed,
    RegistrationConflict,
    SelfRegistration,
    Stopping,
)
from tunmesh.mesh.pool import ClaimConflict, NodePool, Peer
from tunmesh.mesh.settings import BootstrapGroupSpec, MeshSettings
from tunmesh.mesh.structs import IPInterface, NodeInfo, Registration, check_url, url_host
from tunmesh.mesh.timers import KeyedTimers
from tunmesh.names import label

CONTROL = "/tunmesh/control/v0"
AUTH = "/tunmesh/auth/v0"
REGISTER_PATH = CONTROL + "/registrations/register"
INIT_SESSION_PATH = AUTH + "/init_session"
PEERS_PATH = CONTROL + "/peers"
LEAVE_PATH = CONTROL + "/registrations/leave"
#: how long a stopping node waits for its peers to acknowledge that it leaves
LEAVE_TIMEOUT = 2.0
#: extra tries of a bootstrap URL that answered 421 (a load balancer that sent us to ourselves)
SELF_RETRIES = 2
#: timer key of the join pass (bootstrap groups and gossip) run outside the groom tick
JOIN = "join"


def register_path(node_id: str) -> str:
    return f"{REGISTER_PATH}/{node_id}"


def init_session_path(node_id: str) -> str:
    return f"{INIT_SESSION_PATH}/{node_id}"


def leave_path(node_id: str) -> str:
    return f"{LEAVE_PATH}/{node_id}"


def leave_body(node_id: str) -> bytes:
    return b'{"id":"' + node_id.encode("ascii") + b'"}'


@dataclass
class GroupState:
    """Runtime state of one bootstrap group (upstream §4.3)."""

    spec: BootstrapGroupSpec
    attempts: int = 0
    in_flight: bool = False
    reached: set[str] = field(default_factory=set)
    #: URLs whose last try got no answer at all (nothing listening yet): paced by the group's schedule
    unanswered: set[str] = field(default_factory=set)


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
        self.clock = clock
        self._monotonic = monotonic or clock.seconds
        self._wall = wall
        self._rng = rng or random.SystemRandom()
        self._reload = reload
        self.local = settings.local_info(node_id)
        self.pool = NodePool(settings, node_id, self._monotonic)
        self.url_backoff = Backoff(settings.backoff_initial, settings.backoff_max, self._monotonic, self._rng)
        self.peer_backoff = Backoff(settings.backoff_initial, settings.backoff_max, self._monotonic, self._rng)
        #: passes of each bootstrap group (by name): 0.5 s doubling to bootstrap_retry_interval
        self.group_backoff = Backoff(
            min(settings.bootstrap_retry_initial, settings.bootstrap_retry_interval),
            settings.bootstrap_retry_interval,
            self._monotonic,
            self._rng,
        )
        self.timers = KeyedTimers(clock)
        self._last_join_pass: float | None = None
        self._gossip_waiting = False
        self._bootstrap_slots = DeferredSemaphore(settings.max_concurrent_bootstraps)
        self._bootstrapping: dict[str, Deferred[str | None]] = {}
        self._session_ops: dict[str, Deferred[None]] = {}
        #: peer id -> id of the cluster secret that salted our current outbound session to it
        self._outbound_salt: dict[str, str] = {}
        self._renewals: dict[str, Deferred[None]] = {}
        self._observers: list[PeerObserver] = []
        self.groups = [GroupState(g) for g in settings.bootstrap_groups]
        self._seq = 0
        self._registered_once = False
        self._stopped = False
        self._started = self._monotonic()
        self._grace_over_logged = False
        self.last_groom: float | None = None
        #: last failures per peer and URL, removals, inbound refusals (``tunmesh status``)
        self.contacts = ContactLog(self._monotonic)
        self._rlog = RateLimitedLog(self.log, clock)
        self._init_metrics(metrics)
        self.addressing = addressing
        if addressing is not None:
            self._addresses_changed(addressing.addresses())
            addressing.add_observer(self._addresses_changed)

    # -- metrics ------------------------------------------------------------------------------------

    def _init_metrics(self, metrics: Any) -> None:
        self.metrics = metrics
        self.m_auth_failures = metrics.counter(
            "auth_failures", "Requests or responses refused by authentication, by reason.", ("reason",)
        )
        self.m_registrations = metrics.counter(
            "mesh_registrations", "Registrations by direction (in/out) and result.", ("direction", "result")
        )
        self.m_sessions = metrics.counter(
            "mesh_session_setups", "Outbound session setups by kind (init/rotate) and result.", ("kind", "result")
        )
        self.m_inbound_sessions = metrics.counter(
            "mesh_inbound_sessions", "Inbound session setups answered, by kind and result.", ("kind", "result")
        )
        self.m_bootstraps = metrics.counter(
            "mesh_bootstrap_attempts", "Bootstrap registrations by URL, by result.", ("result",)
        )
        self.m_removed = metrics.counter("mesh_peers_removed", "Peers removed, by reason.", ("reason",))
        self.m_gossip_dropped = metrics.counter(
            "mesh_gossip_entries_dropped",
            "Gossip entries (remote nodes in a registration) refused alone, by reason.",
            ("reason",),
        )
        self.m_session_seconds = metrics.histogram(
            "mesh_session_setup_seconds",
            "Outbound session setups by kind (init/rotate) and result (ok or the failure reason): seconds "
            "from the start to the key installed (or the failure), requests and retries included.",
            ("kind", "result"),
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.m_peers = metrics.gauge("mesh_peers", "Peers in the node pool.")
        self.m_sessions_gauge = metrics.gauge("mesh_sessions", "Peers with a usable outbound session.")
        # Rotation (docs/security.md): which secret ids this node accepts and signs with, and which ids the
        # cluster tokens it accepted named: before removing an id, its counter must stop growing everywhere.
        self.m_cluster_secrets = metrics.gauge(
            "cluster_secrets",
            "1 for each cluster secret this node accepts, by secret_id; signing=true for the one it signs with.",
            ("secret_id", "signing"),
        )
        self.m_cluster_tokens = metrics.counter(
            "cluster_tokens_accepted",
            "Cluster-signed requests accepted, by secret_id (the cluster secret they were signed with).",
            ("secret_id",),
        )
        self._show_cluster_secrets()

    def _show_cluster_secrets(self) -> None:
        self.m_cluster_secrets.clear()
        for secret_id in self.cluster.secret_ids:
            signing = "true" if secret_id == self.cluster.signing_id else "false"
            self.m_cluster_secrets.labels(secret_id=secret_id, signing=signing).set(1)

    def cluster_token_accepted(self, token: VerifiedToken) -> None:
        """Count an accepted cluster-signed request by the secret id its ``kid`` named."""
        secret_id = secret_id_of_kid(token.kid)
        if secret_id is not None:
            self.m_cluster_tokens.labels(secret_id=secret_id).inc()

    def auth_failed(self, error: AuthError, where: str) -> None:
        """Count an auth failure and log it rate-limited (never the token); time refusals say the skew."""
        reason = error.reason
        self.m_auth_failures.labels(reason=reason).inc()
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

    def _update_gauges(self) -> None:
        self.m_peers.set(len(self.pool))
        self.m_sessions_gauge.set(sum(1 for p in self.pool if self.sessions.outbound(p.id) is not None))

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
        return [u for g in self.groups for u in g.spec.urls]

    def ready(self) -> bool:
        """True once a registration was exchanged with a peer, or when nothing is configured to join,
        or during `startup_grace` after start (the first node of a cluster whose bootstrap URL is a
        load balancer that only routes to ready pods would otherwise never become ready)."""
        if self._registered_once or not self.bootstrap_urls():
            return True
        return self._monotonic() - self._started < self.settings.startup_grace

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
        now = self._monotonic()
        remote = tuple(p.info for p in self.pool if not p.is_stale(now))
        return Registration(self.local, remote, int(self._wall()), self._seq)

    # -- inbound ------------------------------------------------------------------------------------

    def _count_dropped_gossip(self, registration: Registration, iss: str) -> None:
        for reason in registration.dropped:
            self.m_gossip_dropped.labels(reason=reason).inc()
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
            if self._stopped:
                # We told our peers we leave: do not let a late gossip hint re-admit us.
                raise Stopping("stopping", "node is shutting down")
            registration = Registration.from_json(body, self.settings.bounds)
            if registration.local.id == self.node_id:
                raise SelfRegistration("self", "registration from our own id")
            if registration.local.id != iss:
                raise InvalidRegistration("issuer_mismatch", f"iss {iss} registered {registration.local.id}")
            if not self._peer_url_allowed(registration.local.listen_url):
                raise InvalidRegistration("url_not_allowed", registration.local.listen_url)
            moved = self._resolve_address_claims(registration.local)
            result = self.pool.upsert(registration.local, registration.seq, registration.remote)
            self._count_dropped_gossip(registration, iss)
        except ClaimConflict as exc:
            self.m_registrations.labels(direction=direction, result=exc.reason).inc()
            self.log.warn(
                "registration conflict: {detail} (holder {holder}, claimant {claimant})",
                detail=exc.detail,
                holder=exc.holder.id,
                claimant=iss,
            )
            self._probe_holder(exc.holder)
            if registration.local.claims:
                # A dynamic claimant cannot see the holder through us: send it our registration, whose
                # hints name the holder, so it meets the holder and the rule decides (docs/addressing.md).
                self.clock.callLater(0, self._probe_url, registration.local.listen_url)
            raise
        except MeshError as exc:
            self.m_registrations.labels(direction=direction, result=exc.reason).inc()
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
            self._teardown(old, "replaced")
        self.m_registrations.labels(direction=direction, result="ok").inc()
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
            self.clock.callLater(0, self._spawn_session, peer.id)
        if result.changed:
            self._notify_up(peer)
        if self._has_new_hints(registration.remote):
            self._schedule_join(0.0)
        self._update_gauges()
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
            self.m_inbound_sessions.labels(kind=kind, result=exc.reason).inc()
            raise
        self.pool.touch(peer_id)

        def commit() -> None:
            self.sessions.install_inbound(peer_id, result.kid, result.secret)
            self.m_inbound_sessions.labels(kind=kind, result="ok").inc()

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
                self.clock.callLater(0, self._probe_url, info.listen_url)
                raise RegistrationConflict("address_claim", f"{info.id} claims our address, our claim is older")
        own = {iface.ip for iface in self._defended().values()}
        if info.claims and any(iface.ip in own for iface in info.node_addresses.values()):
            # A configured address always wins; show the dynamic claimant our registration so it moves.
            self.clock.callLater(0, self._probe_url, info.listen_url)
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
            self.clock.callLater(0, self._renew_soon, peer.id)

    def _renew_soon(self, peer_id: str) -> None:
        if not self._stopped and peer_id in self.pool:
            self.renew(peer_id).addErrback(lambda f: None)

    def touch(self, peer_id: str) -> None:
        """Authenticated contact from `peer_id` (any verified request or response)."""
        self.pool.touch(peer_id)

    # -- outbound: helpers ---------------------------------------------------------------------------

    def _check_response(self, response: RawResponse, url: str) -> None:
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

    def _verify_cluster(
        self, response: RawResponse, expected: str | None, request: SignedRequest, where: str
    ) -> VerifiedToken:
        try:
            return self.cluster.verify_response(
                response.authorization, expected, request, response.body, cnf=response.channel
            )
        except AuthError as exc:
            self.auth_failed(exc, where)
            raise PeerRequestFailed("response_auth", exc.reason, response.status) from None

    def _verify_session(
        self, peer_id: str, response: RawResponse, request: SignedRequest, where: str
    ) -> VerifiedToken:
        try:
            return self.session_auth.verify_response(
                peer_id, response.authorization, request, response.body, cnf=response.channel
            )
        except AuthError as exc:
            self.auth_failed(exc, where)
            raise PeerRequestFailed("response_auth", exc.reason, response.status) from None

    def _peer_url_allowed(self, url: str) -> bool:
        """`peer_networks` allow-list for URLs learned from the network (W7).

        Empty list: any host except literal loopback, link-local, unspecified and multicast addresses
        (SSRF into the node itself or a metadata service). Non-empty: the host must be a literal
        address inside one of the networks (a name cannot be checked without resolving it).
        """
        import ipaddress

        nets = self.settings.peer_networks
        try:
            addr = ipaddress.ip_address(url_host(url))
        except ValueError:
            return not nets
        if not nets:
            return not (addr.is_loopback or addr.is_link_local or addr.is_unspecified or addr.is_multicast)
        return any(addr in n for n in nets)

    # -- outbound: bootstrap -------------------------------------------------------------------------

    def bootstrap(self, url: str) -> Deferred[str | None]:
        """Register through `url` with a bootstrap token; fires with the answering peer id (None: self).

        At most `max_concurrent_bootstraps` run at once; the same URL is never bootstrapped twice at
        the same time. Failures errback with `PeerRequestFailed` and back the URL off.
        """
        existing = self._bootstrapping.get(url)
        if existing is not None:
            return _follow(existing)
        d: Deferred[str | None] = self._bootstrap_slots.run(self._bootstrap, url)
        self._bootstrapping[url] = d

        def done(result: Any) -> Any:
            self._bootstrapping.pop(url, None)
            if isinstance(result, Failure):
                # a gossiped URL is tried again when its backoff ends, not on some later groom tick
                self._schedule_join(self.url_backoff.wait(url))
            elif self._gossip_waiting:
                self._schedule_join(0.0)  # a slot is free for a hint that waited for one
            return result

        d.addBoth(done)
        return d

    @inlineCallbacks
    def _bootstrap(self, url: str) -> Any:
        try:
            for _attempt in range(1 + SELF_RETRIES):
                body = self.our_registration().to_json()
                request = self.cluster.sign_request("bootstrap", "POST", REGISTER_PATH, body, typ=TYP_BOOTSTRAP)
                response = yield self.client.post(
                    url, REGISTER_PATH, body, request, timeout=self.settings.registration_timeout
                )
                if response.status != 421:
                    break
                # A load balancer sent us to ourselves: not an error; ask again, it may pick another node.
                self.m_bootstraps.labels(result="self").inc()
                self.log.info("bootstrap via {url} reached this node", url=url)
            else:
                return None
            self._check_response(response, url)
            verified = self._verify_cluster(response, None, request, "bootstrap response")
            peer_id = verified.iss
            if peer_id == self.node_id:
                self.m_bootstraps.labels(result="self").inc()
                return None
            # The URL we used now answers with another id: its old holder restarted (W6).
            previous = self.pool.by_url(url.rstrip("/"))
            if previous is not None and previous.id != peer_id:
                self.log.warn(
                    "{url} now answers as {new}, not {old}: removing {old}", url=url, new=peer_id, old=previous.id
                )
                self._teardown(previous, "restarted")
            self.accept_registration(peer_id, response.body, direction="out")
        except MeshError as exc:
            self.url_backoff.failure(url, _retry_after(exc))
            self.contacts.url_failed(url, "bootstrap", exc.reason, exc.detail, exc.status)
            self.m_bootstraps.labels(result=exc.reason).inc()
            self._rlog.emit(
                ("bootstrap", url, exc.reason),
                LogLevel.warn,
                "bootstrap via {url} failed: {reason} {detail}",
                url=url,
                reason=exc.reason,
                detail=exc.detail,
            )
            raise
        self.url_backoff.success(url)
        self.contacts.url_ok(url)
        self.m_bootstraps.labels(result="ok").inc()
        peer = self.pool.get(peer_id)
        self.log.info(
            "bootstrapped via {url}: peer {peer}",
            url=url,
            peer=label(peer.info.name if peer else None, peer_id),
            peer_id=peer_id,
        )
        return peer_id

    def _probe_holder(self, holder: Peer) -> None:
        """A live holder's address was claimed by another id: ask the holder's URL who answers now.

        Scheduled outside the request that found the conflict; the claimant retries later and wins
        once the probe showed the holder's URL answering with another id (a restart).
        """
        self.clock.callLater(0, self._probe_url, holder.url)

    def _probe_url(self, url: str) -> None:
        if self._stopped or url in self._bootstrapping or not self.url_backoff.allowed(url):
            return
        self.bootstrap(url).addErrback(lambda f: None)

    # -- outbound: sessions --------------------------------------------------------------------------

    def _spawn_session(self, peer_id: str) -> None:
        if not self._stopped and peer_id in self.pool:
            self.ensure_session(peer_id).addErrback(lambda f: None)

    def _schedule_session(self, peer_id: str, delay: float) -> None:
        """Set up the session to `peer_id` again in `delay` s (its backoff), not on a later groom tick."""
        if not self._stopped and peer_id in self.pool:
            self.timers.call_within(("session", peer_id), delay, self._retry_session, peer_id)

    def _retry_session(self, peer_id: str) -> None:
        wait = self.peer_backoff.wait(("session", peer_id))
        if wait > 0:
            self._schedule_session(peer_id, wait)  # the reactor clock ran ahead of the monotonic one
        else:
            self._spawn_session(peer_id)

    def ensure_session(self, peer_id: str, force: bool = False) -> Deferred[None]:
        """Make sure we have a current outbound session to `peer_id` (init, or rotation when due, or now
        with `force`)."""
        if not force and not self.sessions.needs_rotation(peer_id):
            return succeed(None)
        running = self._session_ops.get(peer_id)
        if running is not None:
            return _follow(running)
        key = ("session", peer_id)
        if not self.peer_backoff.allowed(key):
            return _fail(PeerRequestFailed("backoff", peer_id))
        op = self._session_setup(peer_id)
        self._session_ops[peer_id] = op

        def done(result: Any) -> Any:
            self._session_ops.pop(peer_id, None)
            if isinstance(result, Failure):
                rotating = self.sessions.outbound(peer_id) is not None
                floor = _session_retry_floor(result.value, self.settings.init_session_min_interval, rotating)
                self._schedule_session(peer_id, self.peer_backoff.failure(key, floor))
            else:
                self.peer_backoff.success(key)
            return result

        op.addBoth(done)
        return op

    @inlineCallbacks
    def _session_setup(self, peer_id: str) -> Any:
        peer = self.pool.get(peer_id)
        if peer is None:
            raise PeerRequestFailed("unknown_peer", peer_id)
        current = self.sessions.outbound(peer_id)
        kind = "rotate" if current is not None else "init"
        started = self._monotonic()
        initiator = self._kex_initiator(peer_id)
        body = initiator.request_body()
        try:
            if current is not None:
                path = init_session_path(self.node_id)
                request = self.session_auth.sign_request(peer_id, "POST", path, body)
                response = yield self.client.post(peer.url, path, body, request)
                if response.status in (401, 404):
                    # The peer no longer knows this key: drop it and start over with the cluster token.
                    self.sessions.invalidate_outbound(peer_id, request.kid)
                    self.m_sessions.labels(kind=kind, result="refused").inc()
                    kind = "init"
                    current = None
                else:
                    self._check_response(response, peer.url)
                    self._verify_session(peer_id, response, request, "init_session/<id> response")
            if current is None:
                initiator = self._kex_initiator(peer_id)
                body = initiator.request_body()
                request = self.cluster.sign_request(peer_id, "POST", INIT_SESSION_PATH, body, typ=TYP_REQUEST)
                response = yield self.client.post(
                    peer.url, INIT_SESSION_PATH, body, request, timeout=self.settings.registration_timeout
                )
                self._check_response(response, peer.url)
                self._verify_cluster(response, peer_id, request, "init_session response")
            kid, secret = initiator.complete(response.body)
        except (MeshError, KexError) as exc:
            reason = exc.reason
            self.m_sessions.labels(kind=kind, result=reason).inc()
            self.contacts.peer_failed(peer_id, "session", reason, str(exc), getattr(exc, "status", 0))
            self.m_session_seconds.labels(kind=kind, result=reason).observe(self._monotonic() - started)
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
        self._outbound_salt[peer_id] = initiator.request.secret_id
        self.pool.touch(peer_id)
        self.contacts.peer_ok(peer_id)
        self.m_sessions.labels(kind=kind, result="ok").inc()
        self.m_session_seconds.labels(kind=kind, result="ok").observe(self._monotonic() - started)
        self._update_gauges()
        return None

    def _kex_initiator(self, peer_id: str) -> KexInitiator:
        """A new session is salted with this node's signing secret, and the request names it."""
        signing = self.cluster.signing_id
        return KexInitiator(self.cluster.kex_key_for(signing), self.node_id, peer_id, secret_id=signing)

    def set_cluster_keyring(self, keyring: ClusterKeyring) -> None:
        """Accept the cluster secrets of `keyring` from now on (SIGHUP), sign with its signing id, and
        re-salt the sessions that rested on a secret no longer accepted."""
        self.cluster.set_keyring(keyring)
        self._show_cluster_secrets()
        rotated = self.cluster_secrets_changed()
        if rotated:
            self.log.info(
                "rotating {count} outbound session(s) salted with a cluster secret no longer accepted",
                count=len(rotated),
            )

    def cluster_secrets_changed(self) -> list[str]:
        """The accepted cluster secrets changed (reload): rotate now every outbound session that was
        salted with a secret this node no longer accepts, so none outlives the secret's removal by
        more than one exchange. Rotation is make-before-break (W11). Returns the peers rotated."""
        accepted = set(self.cluster.secret_ids)
        stale = [
            peer_id
            for peer_id, salt in list(self._outbound_salt.items())
            if salt not in accepted and peer_id in self.pool and self.sessions.outbound(peer_id) is not None
        ]
        for peer_id in stale:
            self.clock.callLater(0, self._resalt, peer_id)
        return stale

    def _resalt(self, peer_id: str) -> None:
        if self._stopped or peer_id not in self.pool:
            return
        if self._outbound_salt.get(peer_id) in set(self.cluster.secret_ids):
            return  # already rotated (hourly, or a restart of the peer)

        def retry(failure: Failure) -> None:
            # A refused rotation (429 right after another exchange, a peer briefly away): try again
            # once the per-peer interval has passed, while the salt is still one we no longer accept.
            self.clock.callLater(self.settings.init_session_min_interval, self._resalt, peer_id)

        self.ensure_session(peer_id, force=True).addErrback(retry)

    # -- outbound: renewal ---------------------------------------------------------------------------

    def renew(self, peer_id: str) -> Deferred[None]:
        """Re-register with a known peer (session auth, cluster fallback); one at a time per peer."""
        running = self._renewals.get(peer_id)
        if running is not None:
            return succeed(None)
        d = self._renew(peer_id)
        self._renewals[peer_id] = d

        def done(result: Any) -> Any:
            self._renewals.pop(peer_id, None)
            peer = self.pool.get(peer_id)
            if peer is not None:
                if isinstance(result, Failure):
                    delay = self.peer_backoff.failure(("renew", peer_id), _retry_after(result.value))
                    peer.next_attempt = self._monotonic() + delay
                else:
                    self.peer_backoff.success(("renew", peer_id))
                    peer.next_attempt = 0.0
            return result

        d.addBoth(done)
        return d

    @inlineCallbacks
    def _renew(self, peer_id: str) -> Any:
        peer = self.pool.get(peer_id)
        if peer is None:
            raise PeerRequestFailed("unknown_peer", peer_id)
        url = peer.url
        try:
            if self.sessions.outbound(peer_id) is None:
                try:
                    yield self.ensure_session(peer_id)
                except MeshError as exc:
                    # refused (it does not know us), or our setup is backing off: register with the
                    # cluster token anyway, so a session retry never costs the peer its renewal
                    if exc.status not in (401, 404) and exc.reason != "backoff":
                        raise
            fallback = self.sessions.outbound(peer_id) is None
            response: RawResponse | None = None
            if not fallback:
                body = self.our_registration().to_json()
                path = register_path(self.node_id)
                request = self.session_auth.sign_request(peer_id, "POST", path, body)
                response = yield self.client.post(
                    url, path, body, request, timeout=self.settings.registration_timeout
                )
                if response.status in (401, 404):
                    self.sessions.invalidate_outbound(peer_id, request.kid)
                    fallback = True
                else:
                    self._check_response(response, url)
                    self._verify_session(peer_id, response, request, "register/<id> response")
            if fallback:
                self.log.warn(
                    "peer {peer_id} does not know us (or no session): re-registering with the cluster token",
                    peer_id=peer_id,
                )
                body = self.our_registration().to_json()
                request = self.cluster.sign_request(peer_id, "POST", REGISTER_PATH, body, typ=TYP_REQUEST)
                response = yield self.client.post(
                    url, REGISTER_PATH, body, request, timeout=self.settings.registration_timeout
                )
                self._check_response(response, url)
                self._verify_cluster(response, peer_id, request, "register response")
                self.m_registrations.labels(direction="out", result="fallback").inc()
            assert response is not None
            if self.pool.get(peer_id) is None:
                raise PeerRequestFailed("unknown_peer", peer_id)
            self.accept_registration(peer_id, response.body, direction="out")
        except MeshError as exc:
            self.contacts.peer_failed(peer_id, "register", exc.reason, exc.detail, exc.status)
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
            peer.last_renewal = self._monotonic()
            peer.registered_with = True
            self.contacts.peer_ok(peer_id)
            if self.sessions.outbound(peer_id) is None:
                self._spawn_session(peer_id)
        return None

    # -- removal -----------------------------------------------------------------------------------

    def _teardown(self, peer: Peer, reason: str) -> None:
        """Remove a peer and everything that refers to it: routes (observers), sessions, pending ops."""
        self.pool.remove(peer.id)
        self.contacts.peer_removed(peer.id, peer.info.name, peer.url, reason)
        self.sessions.forget(peer.id)
        self._outbound_salt.pop(peer.id, None)
        self.peer_backoff.success(("renew", peer.id))
        self.peer_backoff.success(("session", peer.id))
        self.timers.cancel(("session", peer.id))
        for group in self.groups:
            group.reached.discard(peer.id)
        self._notify_down(peer.id)
        self.m_removed.labels(reason=reason).inc()
        self._update_gauges()

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
        """Tell every peer we hold a session with that we leave (service stop).

        Best effort and bounded: fires with the number of peers that acknowledged, after at most
        `timeout` seconds; peers that miss it groom us as usual.
        """
        path = leave_path(self.node_id)
        body = leave_body(self.node_id)
        requests = []
        for peer in list(self.pool):
            if self.sessions.outbound(peer.id) is None:
                continue
            try:
                request = self.session_auth.sign_request(peer.id, "POST", path, body)
            except AuthError:
                continue
            d = self.client.post(peer.url, path, body, request)
            d.addCallbacks(lambda response: response.status == 200, lambda _failure: False)
            requests.append(d)
        if not requests:
            return succeed(0)
        total = len(requests)
        done: Deferred[Any] = DeferredList(requests, consumeErrors=True)
        done.addCallback(lambda results: sum(1 for _ok, acked in results if acked))
        done.addTimeout(timeout, self.clock)

        def timed_out(failure: Failure) -> int:
            failure.trap(TimeoutError)
            return 0

        done.addErrback(timed_out)

        def report(acked: int) -> int:
            self.log.info("left the mesh: {acked} of {total} peers acknowledged", acked=acked, total=total)
            return acked

        done.addCallback(report)
        return done

    def remove_peer(self, peer_id: str, reason: str) -> bool:
        peer = self.pool.get(peer_id)
        if peer is None:
            return False
        self._teardown(peer, reason)
        return True

    # -- grooming ------------------------------------------------------------------------------------

    def group_bootstrapped(self, group: GroupState) -> bool:
        """Upstream §4.3: no URLs, a reached node still live, or retries exhausted."""
        if not group.spec.urls:
            return True
        now = self._monotonic()
        group.reached = {pid for pid in group.reached if (p := self.pool.get(pid)) is not None and not p.is_stale(now)}
        if group.reached:
            return True
        return group.spec.retries >= 0 and group.attempts > group.spec.retries

    def _maybe_reload(self) -> None:
        if self._reload is None or not self.settings.reload_config_on_bootstrap:
            return
        try:
            specs = tuple(self._reload())
        except Exception as exc:
            self.log.error("config reload before bootstrap failed, keeping the old groups: {error}", error=exc)
            return
        self.set_bootstrap_groups(specs)

    def set_bootstrap_groups(self, specs: Sequence[BootstrapGroupSpec]) -> bool:
        """Use ``specs`` from the next bootstrap pass on (config reload); unchanged groups keep their
        progress. Returns whether anything changed."""
        old = {g.spec.name: g for g in self.groups}
        groups = [old[s.name] if s.name in old and old[s.name].spec == s else GroupState(s) for s in specs]
        changed = [g.spec for g in groups] != [g.spec for g in self.groups]
        self.groups = groups
        for group in groups:
            if group is not old.get(group.spec.name):
                self.group_backoff.success(group.spec.name)  # a new or changed group starts fast
        if changed:
            self._schedule_join(0.0)
        return changed

    def _bootstrap_groups(self) -> None:
        """Start a pass of every group that is not bootstrapped, not in a pass, and whose backoff allows.

        A pass tries every URL of the group that is not our own and not backed off (W7). When it ends
        without reaching a node, the next pass is scheduled (`_group_pass_done`).
        """
        pending = [g for g in self.groups if not self.group_bootstrapped(g)]
        if not pending:
            return
        self._maybe_reload()
        own = self.local.listen_url
        for group in self.groups:
            if group.in_flight or self.group_bootstrapped(group):
                continue
            name = group.spec.name
            if not self.group_backoff.allowed(name):
                self._schedule_join(self.group_backoff.wait(name))
                continue
            urls: list[str] = []
            for raw_url in group.spec.urls:
                try:
                    url = check_url(raw_url, self.settings.max_url_length, f"bootstrap group {name}")
                except MeshError as exc:
                    self.log.error("bad bootstrap URL in group {group}: {detail}", group=name, detail=exc.detail)
                    continue
                if url != own:
                    urls.append(url)
            ready = [u for u in urls if u in group.unanswered or self.url_backoff.allowed(u)]
            if urls and not ready:
                # every URL is backed off (W7): the pass waits for the first one, without counting a try
                self._schedule_join(min(self.url_backoff.wait(u) for u in urls))
                continue
            group.attempts += 1
            group.unanswered.difference_update(ready)
            passes = []
            for url in ready:
                d = self.bootstrap(url)
                d.addCallbacks(self._group_reached, self._group_url_failed, (group,), {}, (group, url))
                passes.append(d)
            if not passes:
                # Only this node's own URL (or none usable: each bad one is logged above): the seed of
                # a mesh whose nodes share one list, expected and lasting, so not a warning every pass
                # (issue 8, quiet steady state). Backed-off URLs wait above without reaching here.
                self._rlog.emit(
                    ("group", name),
                    LogLevel.debug,
                    "bootstrap group {group}: no URL could be tried this pass",
                    group=name,
                )
            group.in_flight = True
            all_done: Deferred[Any] = DeferredList(passes)
            all_done.addCallback(self._group_pass_done, group, tuple(urls))

    def _group_pass_done(self, _results: object, group: GroupState, urls: tuple[str, ...]) -> None:
        """A pass ended: reset the group's schedule when it reached a node, else plan the next pass.

        The next pass comes after the group's backoff (0.5 s doubling to `bootstrap_retry_interval`,
        times U(0.5, 1)) and not before one of its URLs is out of its own backoff (W7, Retry-After).
        """
        group.in_flight = False
        if self._stopped or not any(g is group for g in self.groups):
            return
        name = group.spec.name
        if self.group_bootstrapped(group):
            self.group_backoff.success(name)
            return
        delay = self.group_backoff.failure(name)
        if urls:
            delay = max(delay, min(0.0 if u in group.unanswered else self.url_backoff.wait(u) for u in urls))
        self.log.debug("bootstrap group {group}: next pass in {delay:.2f}s", group=name, delay=delay)
        self._schedule_join(delay)

    def _group_reached(self, peer_id: str | None, group: GroupState) -> None:
        if peer_id is not None:
            group.reached.add(peer_id)

    def _group_url_failed(self, failure: Failure, group: GroupState, url: str) -> None:
        """A configured URL where nothing answered (refused, timed out) is retried on the group's
        schedule, capped at `bootstrap_retry_interval`; one that answered with an error keeps its W7
        backoff (up to 900 s) and any Retry-After."""
        if getattr(failure.value, "status", None) == 0:
            group.unanswered.add(url)

    def _gossip(self) -> None:
        """Bootstrap nodes that peers told us about and we do not know (hints only, W6)."""
        known_urls = {p.url for p in self.pool}
        candidates: dict[str, NodeInfo] = {}
        for peer in self.pool:
            for hint in peer.hints:
                if hint.id == self.node_id or hint.listen_url == self.local.listen_url:
                    continue
                if hint.id in self.pool or hint.listen_url in known_urls:
                    continue
                candidates.setdefault(hint.listen_url, hint)
        free = self.settings.max_concurrent_bootstraps - len(self._bootstrapping)
        self._gossip_waiting = False
        wake: float | None = None
        for url in candidates:
            if len(self.pool) >= self.settings.max_nodes:
                break
            if url in self._bootstrapping:
                continue
            if not self.url_backoff.allowed(url):
                wait = self.url_backoff.wait(url)
                wake = wait if wake is None else min(wake, wait)
                continue
            if not self._peer_url_allowed(url):
                self._rlog.emit(("gossip_url", url), LogLevel.warn, "gossiped URL {url} not in peer_networks", url=url)
                continue
            if free <= 0:
                self._gossip_waiting = True  # the next bootstrap to finish wakes the join pass
                break
            free -= 1
            self.bootstrap(url).addErrback(lambda f: None)
        if wake is not None:
            self._schedule_join(wake)

    def _has_new_hints(self, remote: Sequence[NodeInfo]) -> bool:
        """Whether a registration's hints name a node we neither know nor are (a gossip candidate)."""
        known: set[str] | None = None
        for hint in remote:
            if hint.id == self.node_id or hint.listen_url == self.local.listen_url or hint.id in self.pool:
                continue
            if known is None:
                known = {p.url for p in self.pool}
            if hint.listen_url not in known:
                return True
        return False

    def _schedule_join(self, delay: float) -> None:
        """Run a join pass (bootstrap groups, then gossip) in `delay` s, at most every
        `join_pass_min_interval` (W7: fan-out stays bounded by the concurrency cap and that spacing)."""
        if self._stopped:
            return
        if self._last_join_pass is not None:
            spacing = self._last_join_pass + self.settings.join_pass_min_interval - self._monotonic()
            delay = max(delay, spacing)
        self.timers.call_within(JOIN, delay, self._join_pass)

    def _join_pass(self) -> None:
        if self._stopped:
            return
        self._last_join_pass = self._monotonic()
        try:
            self._bootstrap_groups()
            self._gossip()
        except Exception:
            self.log.failure("join pass failed")

    def groom(self) -> None:
        """One groom tick; starts operations and returns without waiting for them."""
        self._stopped = False
        self.last_groom = self._monotonic()
        try:
            self._check_grace()
            if self.addressing is not None:
                if not self.bootstrap_urls():
                    self.addressing.acknowledged()  # nothing to join: the first node holds its claim
                self.addressing.tick(alone=len(self.pool) == 0, taken=self.pool.taken(hints=False))
            self._bootstrap_groups()
            now = self._monotonic()
            for peer in self.pool:
                if peer.is_stale(now):
                    continue
                if peer.renewal_due(now) and peer.id not in self._renewals:
                    self.renew(peer.id).addErrback(lambda f: None)
                elif self.sessions.needs_rotation(peer.id) and peer.id not in self._session_ops:
                    self._spawn_session(peer.id)
            self._gossip()
            for peer in self.pool.stale():
                self.log.warn(
                    "removing stale peer {peer}: no authenticated contact for {age:.1f}s",
                    peer=label(peer.info.name, peer.id),
                    peer_id=peer.id,
                    peer_name=peer.info.name,
                    age=peer.age(self._monotonic()),
                )
                self._teardown(peer, "stale")
            self.url_backoff.prune()
            self._update_gauges()
        except Exception:
            self.log.failure("groom tick failed")

    def clock_stepped(self, step: float) -> None:
        """This host's wall clock stepped (``ClockStepWatch``): requests refused while our tokens were off
        by the step (``clock_skew`` at the peers) may succeed now, so forget their backoff and retry at
        once instead of waiting out a backoff grown while the clock was wrong (issue 13)."""
        if self._stopped:
            return
        self.url_backoff.reset()
        self.peer_backoff.reset()
        self.group_backoff.reset()
        for group in self.groups:
            group.unanswered.clear()
        for peer in self.pool:
            peer.failures, peer.next_attempt = 0, 0.0
        self.log.info("wall clock stepped by {step:+.1f}s: retrying peers and bootstrap URLs now", step=step)
        self.clock.callLater(0, self.groom)

    def cancel_all(self) -> None:
        """Stop everything in flight (service stop); scheduled follow-ups become no-ops."""
        self._stopped = True
        self.timers.cancel_all()
        self.client.cancel_all()


def _retry_after(exc: object) -> float:
    retry = getattr(exc, "retry_after", None)
    return float(retry) if isinstance(retry, (int, float)) else 0.0


def _session_retry_floor(exc: object, min_interval: float, rotating: bool) -> float:
    """The least wait before the next session setup with a peer after `exc` (W11).

    A 429's Retry-After is always honoured. A first setup refused with 401 (the peer has not processed
    our registration yet: two nodes that joined at the same moment) waits only for its backoff: the peer
    refused it before its one-per-`min_interval` limit. Anything else (a failed rotation, whose current
    key keeps working; no answer, which may have been counted, or may come from a peer too busy to
    answer) waits at least `min_interval`.
    """
    retry = _retry_after(exc)
    if retry > 0:
        return retry
    if not rotating and getattr(exc, "status", None) == 401:
        return 0.0
    return min_interval


def _follow(source: Deferred[Any]) -> Deferred[Any]:
    """A new Deferred with the same result as `source`, leaving `source`'s own chain untouched."""
    mirror: Deferred[Any] = Deferred()

    def relay(result: Any) -> Any:
        if isinstance(result, Failure):
            mirror.errback(result)
        else:
            mirror.callback(result)
        return result

    source.addBoth(relay)
    return mirror


def _fail(exc: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Failure(exc))
    return d
