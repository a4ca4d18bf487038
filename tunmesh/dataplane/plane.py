"""The data plane service: TUN → router → peer links, and peer links → router → TUN.

Everything runs on the reactor thread in batches: one wakeup of the TUN descriptor reads up to
``max_read_batch`` packets, routes them together and hands each peer's share to its link in one
call; one ``dataReceived`` of a link delivers all its frames' packets in one call.  Counters are
incremented once per batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tunmesh import twisted_internals
from tunmesh.dataplane.datagram import DatagramEndpoint
from tunmesh.dataplane.link import (
    HELLO_TIMEOUT,
    KEEPALIVE,
    PEER_DOWN,
    PEER_REMOVED,
    Connector,
    LinkClient,
    LinkMetrics,
    LinkServerFactory,
)
from tunmesh.dataplane.packets import VNET_HDR_LEN
from tunmesh.dataplane.peerstats import PeerPacketMetrics
from tunmesh.dataplane.pollwindow import PollWindow
from tunmesh.dataplane.router import NO_ROUTE, Network, Router
from tunmesh.dataplane.ticker import KeepaliveTicker
from tunmesh.interfaces import LinkAuthorityLike, MetricsLike, PacketDevice, SessionsLike

TUN_WRITE_ERROR = "tun_write_error"


@implementer(IReadDescriptor)
class _TunReader:
    """The TUN descriptor as the reactor sees it: readable → drain a batch."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    def fileno(self) -> int:
        return self._plane.tun.fileno()

    def doRead(self) -> None:
        self._plane._read_tun()

    def connectionLost(self, reason: Failure) -> None:
        self._plane._tun_lost(reason)

    def logPrefix(self) -> str:
        return "tunmesh-tun"


class DataPlane(MultiService):
    """Moves packets between the TUN device and the peers.

    The mesh calls :meth:`peer_up` / :meth:`peer_down` as members come and go; each peer's outbound
    link is a child service (:class:`LinkClient`), added and removed with the peer.  The API's ALPN
    dispatcher mounts :attr:`server_factory` for ``tunmesh-link/1``.
    """

    log = Logger()
    name = "dataplane"  # type: ignore[assignment]

    def __init__(
        self,
        node_id: str,
        tun: PacketDevice,
        router: Router,
        sessions: SessionsLike,
        authority: LinkAuthorityLike,
        link_connector: Connector,
        reactor: IReactorFDSet,
        metrics: MetricsLike,
        *,
        clock: IReactorTime | None = None,
        packet_expiration: float = 0.1,
        max_read_batch: int = 64,
        max_queue_packets: int = 1024,
        max_queue_bytes: int = 4 * 1024 * 1024,
        hello_timeout: float = HELLO_TIMEOUT,
        keepalive: float = KEEPALIVE,
        rng: Callable[[], float] = random.random,
        peer_metrics: PeerPacketMetrics | None = None,
        datagrams: DatagramEndpoint | None = None,
        poll_window: float = 0.0,
    ) -> None:
        super().__init__()
        #: the UDP endpoint of the datagram path (None: networking.datagrams off)
        self.datagrams = datagrams
        self.node_id = node_id
        self.peer_metrics = peer_metrics
        self.tun = tun
        self.router = router
        self._sessions = sessions
        self._authority = authority
        self._connector = link_connector
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        #: keeps the reactor awake for a moment after a lone packet (tunmesh.dataplane.pollwindow)
        self.poll = PollWindow(self._clock, poll_window)
        self._vnet = router.vnet_hdr
        self.packet_expiration = packet_expiration
        self.max_read_batch = max_read_batch
        #: one timer for the keepalives and idle checks of every link, both directions (docs/performance.md, "Scale")
        self.keepalive_ticker = KeepaliveTicker(self._clock, keepalive)
        self._link_opts: dict[str, Any] = {
            "vnet_hdr": self._vnet,
            "packet_expiration": packet_expiration,
            "max_queue_packets": max_queue_packets,
            "max_queue_bytes": max_queue_bytes,
            "hello_timeout": hello_timeout,
            "keepalive": keepalive,
            "rng": rng,
            "ticker": self.keepalive_ticker,
            "datagrams": datagrams,
        }
        self.drops = router.drops
        self.link_metrics = LinkMetrics(metrics, self.drops)
        rx = metrics.counter("tun_rx_packets_total", "Packets read from the TUN device.")
        self._rx_packets = rx
        self._rx_bytes = metrics.counter("tun_rx_bytes_total", "Bytes read from the TUN device.")
        self._tx_packets = metrics.counter("tun_tx_packets_total", "Packets written to the TUN.")
        self._tx_bytes = metrics.counter("tun_tx_bytes_total", "Bytes written to the TUN device.")
        self.links: dict[str, LinkClient] = {}
        #: a peer's human name for the link log lines (membership's pool); set by ``makeService``
        self.name_of: Callable[[str], str | None] = lambda peer_id: None
        self._reader = _TunReader(self)
        self._reading = False
        self.server_factory = LinkServerFactory(
            node_id,
            sessions,
            authority,
            self.is_peer,
            self.on_packets,
            self._clock,
            self.link_metrics,
            vnet_hdr=self._vnet,
            hello_timeout=hello_timeout,
            keepalive=keepalive,
            ticker=self.keepalive_ticker,
            datagrams=datagrams,
        )

        sessions.add_observer(self._session_changed)

    def _session_changed(self, peer_id: str, direction: str, kid: str | None) -> None:
        """SessionStore observer: a forgotten inbound session ends that peer's inbound link
        (its link keys were derived from it); a new inbound one needs nothing (REKEY does it). A new
        outbound one lets a link that was waiting for it connect now rather than after its backoff."""
        if kid is None and direction == "inbound":
            self.server_factory.close_peer(peer_id)
        elif kid is not None and direction == "outbound":
            link = self.links.get(peer_id)
            if link is not None:
                link.session_ready()

    # -- service ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # Once per node: the link's write path depends on private Twisted names (issue 10).
        twisted_internals.log_status(self.log)
        self._reactor.addReader(self._reader)
        self._reading = True

    def stopService(self) -> Any:
        """Stop reading, close every link (the outbound ones as child services: queues dropped as
        ``peer_down``); the result fires when the outbound connections are closed."""
        if self._reading:
            self._reactor.removeReader(self._reader)
            self._reading = False
        for peer_id in list(self.server_factory.links):
            self.server_factory.close_peer(peer_id)
        if self.peer_metrics is not None:
            self.peer_metrics.stop()
        self.poll.stop()
        return super().stopService()

    # -- membership -------------------------------------------------------------------------

    def is_peer(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is a current member (its links are accepted)."""
        return peer_id in self.links

    def peer_up(self, peer_id: str, url: str, cidrs: Iterable[Network | str]) -> None:
        """Route ``cidrs`` to ``peer_id`` and (re)open the link to ``url``."""
        self.router.routes.set_peer(peer_id, cidrs)
        link = self.links.get(peer_id)
        if link is not None and link.url != url:
            link.stop(PEER_DOWN)
            link.disownServiceParent()
            link = None
        if link is None:
            link = LinkClient(
                self.node_id,
                peer_id,
                url,
                self._connector,
                self._sessions,
                self._authority,
                self._clock,
                self.link_metrics,
                peer_name=self.name_of(peer_id),
                **self._link_opts,
            )
            self.links[peer_id] = link
            link.setServiceParent(self)  # started now if the plane runs

    def peer_down(self, peer_id: str) -> None:
        """Forget ``peer_id``: routes, outbound link (queue dropped as ``peer_removed``), inbound link."""
        self.router.routes.remove_peer(peer_id)
        link = self.links.pop(peer_id, None)
        if link is not None:
            link.stop(PEER_REMOVED)
            link.disownServiceParent()
        self.server_factory.forget(peer_id)
        self.drops.forget(peer_id)
        if self.peer_metrics is not None:
            self.peer_metrics.forget(peer_id)

    def link_age(self, peer_id: str) -> float | None:
        """Seconds since a link with ``peer_id`` last carried a frame from it, None when neither is up.

        Both directions count: the PONGs on our outbound link and the PINGs (or packets) on its inbound
        one come over TLS sessions that the link's HELLO bound and authenticated (the client proved the
        session key; the server answered under it), so either is authenticated contact: membership
        counts it (``Membership.link_age``), and a pair at rest then needs no renewal to stay alive.
        """
        ages = []
        link = self.links.get(peer_id)
        if link is not None and link.ready:
            ages.append(max(0.0, self._clock.seconds() - link.last_rx))
        inbound = self.server_factory.rx_age(peer_id)
        if inbound is not None:
            ages.append(inbound)
        return min(ages) if ages else None

    def link_status(self, peer_id: str) -> dict[str, Any]:
        """``tunmesh status``: both directions of ``peer_id``'s link and its drops by reason."""
        now = self._clock.seconds()
        link = self.links.get(peer_id)
        rx = self.server_factory.rx_stats.get(peer_id)
        out = link.stats.to_dict(now) if link is not None else None
        if out is not None and link is not None:
            out["queued_packets"] = link.queued_packets
            path = link.datagram_path
            out["datagram_path"] = (
                None if path is None else {"state": path.state, "address": f"{path.addr[0]}:{path.addr[1]}"}
            )
        return {
            "out": out,
            "in": rx.to_dict(now) if rx is not None else None,
            "drops": dict(self.drops.by_peer.get(peer_id, {})),
        }

    # -- TUN → peers ------------------------------------------------------------------------

    def _read_tun(self) -> None:
        try:
            packets = self.tun.read_batch(self.max_read_batch)
        except OSError as e:
            self._stop_reading()
            self._close_lost_tun(str(e))
            return
        if not packets:
            return
        nbytes = 0
        for p in packets:
            nbytes += len(p)
        self._rx_packets.inc(len(packets))
        self._rx_bytes.inc(nbytes)
        if len(packets) <= 2:
            self.poll.poke()
        links = self.links
        per_peer = self.peer_metrics
        for peer_id, batch in self.router.route_outbound(packets).items():
            link = links.get(peer_id)
            if link is None:
                self.drops.add(NO_ROUTE, len(batch), peer_id)
            else:
                link.send_batch(batch)
                if per_peer is not None:
                    per_peer.sent(peer_id, len(batch), self._ip_bytes(batch))

    def _stop_reading(self) -> None:
        if self._reading:
            self._reactor.removeReader(self._reader)
            self._reading = False

    def _tun_lost(self, reason: Failure) -> None:
        self._reading = False
        self._close_lost_tun(reason.getErrorMessage())

    def _close_lost_tun(self, error: str) -> None:
        """The device failed (deleted from outside, or its descriptor broke): close it, so liveness
        (``/health`` ``tun``) turns false and an orchestrator restarts the node (issue 12, defect 3)."""
        self.log.error(
            "TUN {name} failed, no longer forwarding ({error}); /health now reports tun: false",
            name=self.tun.name,
            error=error,
        )
        self.tun.close()

    # -- peers → TUN ------------------------------------------------------------------------

    def on_packets(self, peer_id: str, packets: list[bytes], vnet_hdr: bool) -> None:
        """Verified packets from ``peer_id``'s link: check, then write to the TUN (never blocks)."""
        accepted = self.router.accept_inbound(peer_id, packets, vnet_hdr)
        if not accepted:
            return
        stats = self.tun.stats
        before = stats.bytes_written
        written, failed = self.tun.write_batch(accepted)
        if written:
            self._tx_packets.inc(written)
            self._tx_bytes.inc(stats.bytes_written - before)
        if failed:
            self.drops.add(TUN_WRITE_ERROR, failed, peer_id)
        if written and self.peer_metrics is not None:
            self.peer_metrics.received(peer_id, written, self._ip_bytes(accepted))
        if written and self._reading and len(accepted) <= 2 and len(max(accepted, key=len)) <= 2048:
            self.poll.poke()
            # A lone small packet is often answered by the kernel before write() returns (an
            # ICMP echo reply, a request/response protocol): read the answer now and send it in
            # this reactor iteration instead of the next epoll round (one loop less per round
            # trip).  Not for bulk batches: reading there splits ACK batches and costs throughput.
            self._read_tun()

    def _ip_bytes(self, packets: Sequence[bytes]) -> int:
        """IP bytes of a batch (without the virtio headers of an offload TUN)."""
        total = 0
        for p in packets:
            total += len(p)
        return total - VNET_HDR_LEN * len(packets) if self._vnet else total
