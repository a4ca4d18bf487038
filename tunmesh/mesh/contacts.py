""":class:`ContactLog`: the last failure of each peer and bootstrap URL, for ``tunmesh status`` (issue 8).

Membership already counts failures in metrics and logs them rate-limited; an operator looking at one node
also needs to see *which* peer or URL fails, how, since when, and whether it recovered. This keeps exactly
that, bounded: one record per peer in the pool, per URL (bootstrap and gossip, at most ``max_urls``), the
last ``max_removed`` removed peers, and the latest inbound authentication refusal. Reasons are the short
labels of :class:`tunmesh.mesh.errors.MeshError` (``status_401``, ``transport``, ``response_auth``...);
``detail`` is the text logs carry (never a token or a secret).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class FailureRecord:
    """The last failure of one peer or URL; ``failures`` counts consecutive ones (0 once it worked again)."""

    operation: str
    reason: str
    detail: str
    status: int
    at: float
    failures: int = 1
    ok_at: float | None = None


@dataclass(frozen=True)
class Removal:
    """A peer that left the pool: when (monotonic) and why (``stale``, ``left``, ``replaced``...)."""

    peer_id: str
    name: str | None
    url: str
    reason: str
    at: float


@dataclass
class InboundRefusals:
    """Requests to this node refused by authentication: how many, and the latest reason and place."""

    count: int = 0
    reason: str = ""
    where: str = ""
    at: float = 0.0


class ContactLog:
    """Per-peer and per-URL outcome of the control requests this node makes (see module docstring)."""

    def __init__(self, monotonic: Callable[[], float], max_urls: int = 256, max_removed: int = 16) -> None:
        self._monotonic = monotonic
        self._max_urls = max_urls
        self.peers: dict[str, FailureRecord] = {}
        self.urls: OrderedDict[str, FailureRecord] = OrderedDict()
        self.removed: deque[Removal] = deque(maxlen=max_removed)
        self.inbound = InboundRefusals()

    @staticmethod
    def _record(
        table: dict[str, FailureRecord], key: str, operation: str, reason: str, detail: str, status: int, now: float
    ) -> FailureRecord:
        old = table.get(key)
        count = old.failures + 1 if old is not None else 1
        record = FailureRecord(operation, reason, detail, status, now, count)
        table[key] = record
        return record

    def peer_failed(self, peer_id: str, operation: str, reason: str, detail: str = "", status: int = 0) -> None:
        """A request to a pool peer (``register``, ``session``) failed."""
        self._record(self.peers, peer_id, operation, reason, detail, status, self._monotonic())

    def peer_ok(self, peer_id: str) -> None:
        """A request to ``peer_id`` succeeded: the failure stays visible as history, not as current."""
        record = self.peers.get(peer_id)
        if record is not None and record.failures:
            record.failures = 0
            record.ok_at = self._monotonic()

    def url_failed(self, url: str, operation: str, reason: str, detail: str = "", status: int = 0) -> None:
        """A bootstrap (configured or gossiped URL) failed."""
        self._record(self.urls, url, operation, reason, detail, status, self._monotonic())
        self.urls.move_to_end(url)
        while len(self.urls) > self._max_urls:
            self.urls.popitem(last=False)

    def url_ok(self, url: str) -> None:
        record = self.urls.get(url)
        if record is not None and record.failures:
            record.failures = 0
            record.ok_at = self._monotonic()

    def peer_removed(self, peer_id: str, name: str | None, url: str, reason: str) -> None:
        """``peer_id`` left the pool; its failure record goes with it (the removal says why)."""
        self.peers.pop(peer_id, None)
        self.removed.append(Removal(peer_id, name, url, reason, self._monotonic()))

    def inbound_refused(self, reason: str, where: str) -> None:
        """A request or response to this node failed authentication (wrong secret, clock, replay...)."""
        refusals = self.inbound
        refusals.count += 1
        refusals.reason, refusals.where, refusals.at = reason, where, self._monotonic()
