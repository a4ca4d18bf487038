""":class:`StatusReporter`: the node's own view for ``tunmesh status`` (issue 8), as one JSON-ready dict.

Built on demand from what the node already keeps: the node pool and the contact log (membership), the
session store, the links' :class:`tunmesh.dataplane.linkstats.LinkStats` (data plane) and the health
registry. Times are ages in seconds on the monotonic clock (a wall-clock step cannot make them lie).
Nothing secret is in it: session kids are identifiers, failure details are the text the logs carry.
The shape is documented in docs/api_flows.md ("The admin socket"); :mod:`tunmesh.admin.render` draws it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from tunmesh.admin.hints import failure_hint, inbound_hint, link_hint, readiness_hint
from tunmesh.mesh.contacts import ContactLog, FailureRecord

#: version of the status document (bumped when a field changes meaning; new fields do not bump it)
FORMAT = 1


class PeerLike(Protocol):
    """What status reads of a pool peer (:class:`tunmesh.mesh.pool.Peer`)."""

    @property
    def id(self) -> str: ...

    @property
    def url(self) -> str: ...

    info: Any
    peer_class: str
    routes: tuple[Any, ...]
    last_contact: float
    first_seen: float
    last_renewal: float | None
    registered_with: bool


class SessionsLike(Protocol):
    def ages(self, peer_id: str) -> Mapping[str, tuple[str, float] | None]: ...


class MembershipLike(Protocol):
    """What status reads of :class:`tunmesh.mesh.membership.Membership`."""

    contacts: ContactLog

    @property
    def pool(self) -> Iterable[Any]: ...

    @property
    def sessions(self) -> SessionsLike: ...

    def bootstrap_urls(self) -> list[str]: ...


class LinksLike(Protocol):
    """What status reads of the data plane: :meth:`tunmesh.dataplane.plane.DataPlane.link_status`."""

    def link_status(self, peer_id: str) -> dict[str, Any]: ...


class HealthLike(Protocol):
    def readiness(self) -> dict[str, bool]: ...

    def liveness(self) -> dict[str, bool]: ...


def _age(now: float, t: float | None) -> float | None:
    return None if t is None else round(max(0.0, now - t), 3)


def failure_dict(record: FailureRecord, now: float) -> dict[str, Any]:
    """A contact-log record with its age and what to check."""
    return {
        "operation": record.operation,
        "reason": record.reason,
        "status": record.status or None,
        "detail": record.detail,
        "failures": record.failures,
        "age_s": _age(now, record.at),
        "ok_age_s": _age(now, record.ok_at),
        "hint": failure_hint(record.reason, record.status, record.detail),
    }


class StatusReporter:
    """Builds the status document from the node's parts (see module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        version: str,
        advertise_url: str,
        addresses: Callable[[], Mapping[str, str]],
        started: float,
        membership: MembershipLike,
        links: LinksLike | None,
        health: HealthLike,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.name = name
        self.version = version
        self.advertise_url = advertise_url
        #: this node's overlay addresses now (they may move: dynamic addressing, docs/addressing.md)
        self.addresses = addresses
        self.started = started
        self.membership = membership
        self.links = links
        self.health = health
        self._monotonic = monotonic

    def status(self) -> dict[str, Any]:
        now = self._monotonic()
        contacts = self.membership.contacts
        peers = [self._peer(peer, now) for peer in self.membership.pool]
        peers.sort(key=lambda p: (p["name"] or "", p["id"]))
        bootstrap = {u.rstrip("/") for u in self.membership.bootstrap_urls()}
        urls = []
        for url, record in contacts.urls.items():
            entry: dict[str, Any] = {"url": url, "bootstrap": url.rstrip("/") in bootstrap}
            entry.update(failure_dict(record, now))
            urls.append(entry)
        removed = [
            {"id": r.peer_id, "name": r.name, "url": r.url, "reason": r.reason, "age_s": _age(now, r.at)}
            for r in reversed(contacts.removed)
        ]
        return {"format": FORMAT, "node": self._node(now, len(peers)), "peers": peers, "urls": urls, "removed": removed}

    def _node(self, now: float, peer_count: int) -> dict[str, Any]:
        readiness = self.health.readiness()
        refusals = self.membership.contacts.inbound
        return {
            "name": self.name,
            "id": self.node_id,
            "url": self.advertise_url,
            "addresses": dict(self.addresses()),
            "version": self.version,
            "uptime_s": round(now - self.started, 3),
            "ready": all(readiness.values()),
            "not_ready": [{"check": k, "hint": readiness_hint(k)} for k, ok in sorted(readiness.items()) if not ok],
            "live": all(self.health.liveness().values()),
            "peers": peer_count,
            "inbound_auth_failures": {
                "count": refusals.count,
                "reason": refusals.reason or None,
                "where": refusals.where or None,
                "age_s": _age(now, refusals.at) if refusals.count else None,
                "hint": inbound_hint(refusals.reason) if refusals.count else "",
            },
        }

    def _peer(self, peer: PeerLike, now: float) -> dict[str, Any]:
        sessions = self.membership.sessions.ages(peer.id)
        link = self.links.link_status(peer.id) if self.links is not None else {"out": None, "in": None, "drops": {}}
        record = self.membership.contacts.peers.get(peer.id)
        failure = failure_dict(record, now) if record is not None else None
        state, hint = _peer_state(link.get("out"), failure)
        return {
            "name": peer.info.name,
            "id": peer.id,
            "url": peer.url,
            "addresses": [str(r) for r in peer.routes],
            "class": peer.peer_class,
            "state": state,
            "hint": hint,
            "last_contact_age_s": _age(now, peer.last_contact),
            "first_seen_age_s": _age(now, peer.first_seen),
            "last_renewal_age_s": _age(now, peer.last_renewal),
            "sessions": {
                direction: None if value is None else {"kid": value[0], "age_s": round(value[1], 3)}
                for direction, value in sessions.items()
            },
            "link": {"out": link.get("out"), "in": link.get("in")},
            "drops": link.get("drops", {}),
            "last_failure": failure,
        }


def _peer_state(out: Mapping[str, Any] | None, failure: Mapping[str, Any] | None) -> tuple[str, str]:
    """One word for the peer, and what to check: ``up`` (our link to it carries packets), else why not.

    A control request failing right now wins over the link's own story (it says more: 401, refused...).
    """
    failing = failure is not None and failure["failures"] > 0
    if out is not None and out["state"] == "up" and not failing:
        return "up", ""
    if failing:
        assert failure is not None
        reason = failure["reason"]
        word = "unreachable" if reason in ("transport", "timeout", "tls") else "failing"
        if out is not None and out["state"] == "up":
            word = "degraded"
        return word, failure["hint"] or f"{failure['operation']} failed: {reason}"
    if out is None:
        return "no-link", ""
    return out["state"], link_hint(out.get("last_error") or "")
