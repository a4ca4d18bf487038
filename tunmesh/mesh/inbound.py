"""``Inbound``: the registrations, session inits and leaves peers send us, once their token verified.

A component of :class:`tunmesh.mesh.membership.Membership` (see there), called by ``MeshAPI``. Only a
registration's ``local`` entry (the issuer itself) can install routes; its ``remote`` entries are hints
for gossip (W6). Dynamic address claims are decided here (docs/addressing.md). Inbound keeps no state of
its own: the pool, the session store and the address claimer hold what a request changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.logger import Logger, LogLevel

from tunmesh.auth.errors import AuthError, KexError
from tunmesh.auth.kex import KexRequest, respond
from tunmesh.auth.tokens import VerifiedToken, is_cluster_kid
from tunmesh.mesh.addressing import Verdict
from tunmesh.mesh.bootstrap import peer_url_allowed
from tunmesh.mesh.component import Component
from tunmesh.mesh.errors import (
    InvalidRegistration,
    MeshError,
    RegistrationConflict,
    SelfRegistration,
    Stopping,
)
from tunmesh.mesh.exchange import leave_body
from tunmesh.mesh.pool import ClaimConflict, Peer
from tunmesh.mesh.structs import NodeInfo, NodeInfoCache, Registration
from tunmesh.names import label

if TYPE_CHECKING:
    from tunmesh.mesh.membership import Membership


class Inbound(Component):
    """Inbound registrations, session inits and leaves (see module docstring)."""

    log = Logger()

    def __init__(self, membership: Membership) -> None:
        super().__init__(membership)
        #: every entry of a table we hold, and our peers' own entries: twice ``max_nodes``
        self.entries = NodeInfoCache(2 * (self.settings.max_nodes + 1))

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
        """Process a registration whose token verified with issuer ``iss``.

        Raises ``MeshError`` subclasses (400/409/421/503). Only ``local`` (the issuer itself) can install
        routes; ``remote`` entries are stored as hints for gossip (W6).
        """
        try:
            if self.membership.stopped:
                # We told our peers we leave: do not let a late gossip hint re-admit us.
                raise Stopping("stopping", "node is shutting down")
            registration = Registration.from_json(body, self.settings.bounds, self.entries)
            if registration.local.id == self.node_id:
                raise SelfRegistration("self", "registration from our own id")
            if registration.local.id != iss:
                raise InvalidRegistration("issuer_mismatch", f"iss {iss} registered {registration.local.id}")
            if not peer_url_allowed(registration.local.listen_url, self.settings.peer_networks):
                raise InvalidRegistration("url_not_allowed", registration.local.listen_url)
            held = self.pool.get(iss)
            if held is not None and registration.seq < held.last_seq:
                # Older than a registration of the same node we accepted already (its request and its
                # answer to one of ours crossed, or one waited for a free request slot): authentic but
                # superseded. Its content is not applied, and the exchange is answered as usual;
                # refusing it (409) cost the sender a failed renewal and its backoff, 1 700 times in one
                # 50-node join (docs/performance.md, "Scale").
                self.meters.registrations.labels(direction=direction, result="superseded").inc()
                return registration, held
            moved = self.resolve_address_claims(registration.local)
            hints = self.membership.gossip.incoming(iss, registration, held.hints if held is not None else ())
            result = self.pool.upsert(registration.local, registration.seq, hints)
            self.membership.gossip.accepted(iss, registration)
            self._count_dropped_gossip(registration, iss)
        except ClaimConflict as exc:
            self.meters.registrations.labels(direction=direction, result=exc.reason).inc()
            self.log.warn(
                "registration conflict: {detail} (holder {holder}, claimant {claimant})",
                detail=exc.detail,
                holder=exc.holder.id,
                claimant=iss,
            )
            self.membership.bootstrapper.probe_holder(exc.holder)
            if registration.local.claims:
                # A dynamic claimant cannot see the holder through us: send it our registration, whose
                # hints name the holder, so it meets the holder and the rule decides (docs/addressing.md).
                self.clock.callLater(0, self.membership.bootstrapper.probe_url, registration.local.listen_url)
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
            self.membership.teardown(old, "replaced")
        self.meters.registrations.labels(direction=direction, result="ok").inc()
        self.membership.joined()
        if direction == "out" and self.membership.addressing is not None and not moved:
            self.membership.addressing.acknowledged()  # the peer accepted a registration carrying our (current) claims
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
            self.clock.callLater(0, self.membership.session_setup.spawn, peer.id)
        if result.changed:
            self.membership.notify_up(peer)
        if self.membership.bootstrapper.has_new_hints(registration.remote):
            self.membership.bootstrapper.schedule_join(0.0)
        return registration, peer

    def accept_init_session(self, token: VerifiedToken, body: bytes) -> tuple[bytes, Callable[[], None]]:
        """Answer an init_session from ``token.iss`` (the future sender); rate limited per peer (W11).

        Returns the response body and a ``commit`` to call after the response was signed (it installs
        the new inbound key, so the current one becomes ``previous``). Raises AuthError (401/429) or
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

    def resolve_address_claims(self, info: NodeInfo) -> bool:
        """Apply the claim rule when ``info`` claims one of our dynamic addresses.

        We lose: we have moved (observers ran; returns True), or have nowhere to go (exhausted, not ready),
        and the registration goes on. We keep it: 409, and the other node gets our registration so it sees
        the older claim and moves.
        """
        verdict = Verdict.NO_CONFLICT
        if self.membership.addressing is not None:
            verdict = self.membership.addressing.resolve(info, self.pool.taken())
            if verdict is Verdict.WE_KEEP:
                self.clock.callLater(0, self.membership.bootstrapper.probe_url, info.listen_url)
                raise RegistrationConflict("address_claim", f"{info.id} claims our address, our claim is older")
        own = {iface.ip for iface in self.membership.defended().values()}
        if info.claims and any(iface.ip in own for iface in info.node_addresses.values()):
            # A configured address always wins; show the dynamic claimant our registration so it moves.
            self.clock.callLater(0, self.membership.bootstrapper.probe_url, info.listen_url)
            raise RegistrationConflict("address_claim", f"{info.id} claims our configured address")
        return verdict is not Verdict.NO_CONFLICT

    def accept_leave(self, iss: str, body: bytes) -> Callable[[], None]:
        """``iss`` (verified by its session token) announces that it shuts down.

        Returns the ``commit`` that removes it (to call once the response is signed: removal
        forgets the session that signs it), now instead of after ``stale_threshold``, so its
        addresses are free for its successor at once.
        """
        if body != leave_body(iss):
            raise InvalidRegistration("bad_leave", "leave body does not name the issuer")

        def commit() -> None:
            peer = self.pool.get(iss)
            name = peer.info.name if peer is not None else None
            if self.membership.remove_peer(iss, "left"):
                self.log.info("peer {peer} left the mesh", peer=label(name, iss), peer_id=iss, peer_name=name)

        return commit
