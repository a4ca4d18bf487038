""":class:`MeshService`: the groom loop as a Twisted service, plus the pieces ``makeService`` wires together."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from tunmesh.auth.cluster import ClusterAuthority, ClusterKeyring
from tunmesh.auth.sessions import SessionStore
from tunmesh.clocks import WallClock
from tunmesh.config.tree import TunMeshConfig
from tunmesh.health import HealthRegistry
from tunmesh.interfaces import MetricsLike, SecondsClock
from tunmesh.mesh.addressing import AddressClaimer
from tunmesh.mesh.api import MeshAPI
from tunmesh.mesh.client import MeshClient
from tunmesh.mesh.membership import Membership
from tunmesh.mesh.settings import BootstrapGroupSpec, MeshSettings


class MeshService(TimerService):
    """Runs :meth:`Membership.groom` every ``groom_interval`` (first tick at start); stops and cancels cleanly."""

    name: str | None = "mesh"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, membership: Membership, clock: IReactorTime) -> None:
        super().__init__(membership.settings.groom_interval, self._groom)
        self.membership = membership
        self.clock = clock

    def _groom(self) -> None:
        """One tick; an exception (``groom`` catches its own) stops the loop, as a failed call stops a
        ``LoopingCall``, with one log line instead of ``TimerService``'s unhandled-error report."""
        try:
            self.membership.groom()
        except Exception:
            self.log.failure("groom loop stopped")
            self._loop.stop()

    def stopService(self) -> Deferred[int]:
        """Stop the loop and everything in flight, tell the peers we leave (bounded), close the
        client's pooled connections, and fire with the number of peers that acknowledged.

        The result is delivered from the reactor loop (``callLater(0)``), never from inside the
        protocol callback that delivered the last acknowledgement: twistd continues its shutdown
        synchronously when this fires, and the reactor's ``disconnectAll`` would otherwise tear down
        the very TLS connection whose ``dataReceived`` is still on the stack (``'NoneType' object
        has no attribute 'bio_read'``).
        """
        if self.running:
            # Stops the loop; the tick is synchronous, so none is in progress and this is done now.
            super().stopService()
        else:
            Service.stopService(self)
        self.membership.cancel_all()
        d = self.membership.leave()

        def leave_failed(failure: Failure) -> int:
            self.log.failure("telling peers we leave failed", failure=failure)
            return 0

        d.addErrback(leave_failed)

        def close_client(acked: int) -> Deferred[int]:
            closed = self.membership.client.close()
            closed.addErrback(lambda f: self.log.failure("closing the mesh client failed", failure=f))
            return closed.addCallback(lambda _: acked)

        d.addCallback(close_client)
        d.addCallback(lambda acked: deferLater(self.clock, 0, lambda: acked))
        return d

    def alive(self) -> bool:
        """Liveness: the loop runs and ticked within three intervals."""
        if not self.running or not self._loop.running:
            return False
        age = self.membership.since_last_groom()
        return age is not None and age <= 3 * self.membership.settings.groom_interval

    def register_health(self, health: HealthRegistry) -> None:
        """``mesh`` readiness (joined, or nothing to join), ``address`` readiness (dynamic addressing: the
        claimed address is held) and ``mesh_groom`` liveness."""
        health.add_readiness("mesh", self.membership.ready)
        if self.membership.addressing is not None and self.membership.addressing.dynamic:
            # Ready only once our claimed address is held (docs/addressing.md).
            health.add_readiness("address", self.membership.addressing.held)
        health.add_liveness("mesh_groom", self.alive)


def cluster_keyring(cfg: TunMeshConfig) -> ClusterKeyring:
    """The cluster secrets of a config, by id, and the one this node signs with."""
    auth = cfg.clustering.auth
    return ClusterKeyring(auth.accepted_secrets, auth.signing_id)


def build_mesh(
    cfg: TunMeshConfig,
    node_id: str,
    reactor: IReactorTime,
    metrics: MetricsLike,
    http_client: MeshClient,
    reload: Callable[[], Sequence[BootstrapGroupSpec]] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    wall: SecondsClock | None = None,
    addressing: AddressClaimer | None = None,
    settings: MeshSettings | None = None,
) -> tuple[Membership, MeshAPI, MeshService]:
    """Everything the mesh needs from a config, for ``makeService`` (``settings``: the config's
    :class:`MeshSettings`, when the caller read them already)."""
    if settings is None:
        settings = MeshSettings.from_config(cfg)
    wall = wall if wall is not None else WallClock()
    auth_timing = cfg.process.timing.auth
    validity = min(float(auth_timing.validity_window), 60.0)
    # Tokens carry wall time (judged by other hosts' clocks); timers and ages use reactor/monotonic time.
    cluster = ClusterAuthority(cluster_keyring(cfg), node_id, wall, validity=validity)
    sessions = SessionStore(
        node_id,
        wall,
        monotonic=monotonic,
        max_age=float(auth_timing.session_max_age),
        validity=validity,
        # W11's one init per 10 s per peer, but never slower than the configured rotation itself
        # (a short session_max_age, as the tests use, must still rotate on time).
        init_interval=min(10.0, float(auth_timing.session_max_age) / 2),
    )
    membership = Membership(
        settings,
        node_id,
        cluster,
        sessions,
        http_client,
        reactor,
        metrics,
        monotonic=monotonic,
        wall=wall.seconds,
        rng=random.SystemRandom(),
        reload=reload,
        addressing=addressing,
    )
    return membership, MeshAPI(membership), MeshService(membership, reactor)
