""":class:`GossipDigests`: a registration carries the sender's peer table only when the receiver does not hold it.

Every registration (bootstrap, renewal, and the answer to each) used to carry the sender's whole table of
live peers as gossip hints (``remote``, W6): at rest, with every local peer renewed every few seconds, each
node sent and parsed O(N) entries per message, O(N²) per interval (docs/performance.md, "Scale"). Now each
registration also carries two optional digests (``tunmesh.mesh.structs.Registration``):

* ``remote_digest``: the digest of the sender's current table;
* ``known_digest``: the ``remote_digest`` of the last table the sender received *from the recipient*.

A sender leaves ``remote`` out (``elided``) when the recipient's last registration said it holds exactly
the table the sender has now; the receiver of an elided registration keeps the hints it holds from the
sender. So at rest a registration's size does not grow with N, and a changed table is sent once to each
peer. Digests are always compared as the *sender* computed them, never recomputed by the receiver, so a
receiver that drops or normalises entries (issue 12) still agrees.

While the membership changes (a join of many nodes, a churn), a table changes between two registrations
to the same peer, and sending it whole each time made the join cost O(N) tables of O(N) entries to each
of N peers (N³ bytes per node; docs/performance.md "Scale"). So the sender keeps its last few tables by
digest (``RECENT_TABLES``), and when the recipient holds one of them (its ``known_digest``) it sends a
**delta** instead (``base_digest``, ``remote_base`` on the wire): the entries new or changed since that
table, and the ids removed. The receiver applies it to the hints it holds; when they were that table (as
named by the sender) it then holds the new one, otherwise (two deltas crossed) it names no
``known_digest`` back, so the next registration carries the whole table.

Mixed versions (rolling upgrade): an older node sends no ``known_digest``, so it is always sent the full
table; it ignores the two new keys. An elided registration reaching a node that does not hold the
sender's table (it restarted, or removed the sender) stores no hints from it, and its next registration to
the sender names no (or another) ``known_digest``, so the sender sends the full table again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from tunmesh.mesh.structs import NodeInfo, Registration


def table_digest(remote: Sequence[NodeInfo]) -> str:
    """A digest of a peer table, independent of its order (24 hex digits, BLAKE2b)."""
    h = hashlib.blake2b(digest_size=12)
    for info in sorted(remote, key=lambda i: i.id):
        h.update(info.wire)
        h.update(b"\n")
    return h.hexdigest()


#: how many of our own recent tables a node keeps to send deltas against (a peer more changes behind
#: gets the whole table); a few tuples of references to entries the pool holds anyway
RECENT_TABLES = 64


def table_delta(
    base: tuple[NodeInfo, ...], current: tuple[NodeInfo, ...]
) -> tuple[tuple[NodeInfo, ...], tuple[str, ...]] | None:
    """The entries of ``current`` new or changed since ``base``, and the ids of ``base`` gone from it;
    None when that is no smaller than ``current`` itself (the whole table is sent then)."""
    before = {info.id: info for info in base}
    changed = tuple(
        info for info in current if (old := before.get(info.id)) is None or (old is not info and old.wire != info.wire)
    )
    ids = {info.id for info in current}
    removed = tuple(i for i in before if i not in ids)
    if len(changed) + len(removed) >= len(current):
        return None
    return changed, removed


def holds_entries(table: Sequence[NodeInfo], hints: Sequence[NodeInfo], holder: str) -> bool:
    """Whether a peer ``holder`` whose own table is ``hints`` (the last one it sent us) holds every entry
    of our ``table`` but its own, as we hold it: our table would tell it nothing new, even though it
    does not hold the table itself (its digest differs: it holds us, and members we dropped or do not
    know yet). While many nodes join, each registers with every node it learns of, so most pairs learn
    of a newcomer first-hand and their tables agree on it before either tells the other
    (``Membership.groom``)."""
    held = {info.id: info for info in hints}
    for info in table:
        if info.id == holder:
            continue
        old = held.get(info.id)
        if old is None or (old is not info and old.wire != info.wire):
            return False
    return True


def apply_delta(held: tuple[NodeInfo, ...], registration: Registration) -> tuple[NodeInfo, ...]:
    """``held`` (the sender's table as of the delta's base) with the delta of ``registration`` applied."""
    gone = {*registration.removed, *registration.dropped_ids, *(info.id for info in registration.remote)}
    return tuple(info for info in held if info.id not in gone) + registration.remote


class GossipDigests:
    """What this node knows of its peers' tables and they of its own; one per ``Membership``."""

    def __init__(self) -> None:
        #: the remote_digest of the table we hold as hints from each peer (as that peer computed it)
        self._held: dict[str, str] = {}
        #: the digest of our table each peer said it holds (its known_digest)
        self._peer_holds: dict[str, str] = {}
        self._cached: tuple[tuple[NodeInfo, ...], str] | None = None
        #: our last ``RECENT_TABLES`` tables by digest, oldest first: the bases of deltas
        self._recent: dict[str, tuple[NodeInfo, ...]] = {}
        #: when (monotonic) each peer was last sent our table or a delta of it (not an elided registration)
        self._told: dict[str, float] = {}
        self.elided = 0
        self.deltas = 0

    def digest(self, remote: tuple[NodeInfo, ...]) -> str:
        """:func:`table_digest` of our table, computed once per distinct table (entries are immutable)."""
        cached = self._cached
        if cached is not None and len(cached[0]) == len(remote) and all(a is b for a, b in zip(cached[0], remote, strict=True)):
            return cached[1]
        value = table_digest(remote)
        self._cached = (remote, value)
        self._recent.pop(value, None)
        self._recent[value] = remote
        if len(self._recent) > RECENT_TABLES:
            del self._recent[next(iter(self._recent))]
        return value

    def outgoing(self, registration: Registration, recipient: str | None) -> Registration:
        """``registration`` with the digests for ``recipient`` (None: unknown, as a bootstrap through a URL
        that may be a load balancer): its table left out when the recipient holds it already, a delta
        when it holds one of our recent tables, else whole."""
        digest = self.digest(registration.remote)
        known = self._held.get(recipient) if recipient is not None else None
        holds = self._peer_holds.get(recipient) if recipient is not None else None
        if holds == digest:
            self.elided += 1
            return replace(registration, remote_digest=digest, known_digest=known, elided=True)
        base = self._recent.get(holds) if holds is not None else None
        delta = table_delta(base, registration.remote) if base is not None else None
        if delta is not None:
            self.deltas += 1
            changed, removed = delta
            return replace(
                registration, remote=changed, remote_digest=digest, known_digest=known, base_digest=holds, removed=removed
            )
        return replace(registration, remote_digest=digest, known_digest=known, elided=False)

    def incoming(self, sender: str, registration: Registration, held: tuple[NodeInfo, ...]) -> tuple[NodeInfo, ...]:
        """The hints to keep from ``sender``'s ``registration``, given the ``held`` ones: its table; when it
        left the table out, the held one if that is the table it means; when it sent a delta, the held one
        changed by it (when the held ones are not the delta's base, as after two deltas crossed, this is a
        best guess until the whole table comes: :meth:`accepted` asks for it)."""
        if registration.base_digest is not None:
            if self._holds_named(sender, registration):
                return held  # the same delta again (our request and our answer to its request crossed)
            return apply_delta(held, registration)
        if not registration.elided:
            return registration.remote
        if self._holds_named(sender, registration):
            return held
        return ()

    def accepted(self, sender: str, registration: Registration) -> None:
        """``sender``'s registration was accepted: remember which table each side holds of the other."""
        if registration.known_digest is None:
            self._peer_holds.pop(sender, None)
        else:
            self._peer_holds[sender] = registration.known_digest
        if registration.base_digest is not None:
            if self._holds_named(sender, registration):
                pass  # a delta to the table we hold already
            elif self._held.get(sender) == registration.base_digest and registration.remote_digest is not None:
                self._held[sender] = registration.remote_digest  # the delta was applied (``incoming``)
            else:
                self._held.pop(sender, None)  # we did not hold its base: ask for the whole table again
        elif not registration.elided:
            if registration.remote_digest is None:
                self._held.pop(sender, None)  # an older node: nothing to name back
            else:
                self._held[sender] = registration.remote_digest
        elif not self._holds_named(sender, registration):
            self._held.pop(sender, None)  # we do not hold what it meant: ask for the table again

    def _holds_named(self, sender: str, registration: Registration) -> bool:
        """Whether the hints we hold from ``sender`` are the table its ``registration`` names."""
        return registration.remote_digest is not None and self._held.get(sender) == registration.remote_digest

    def sent(self, recipient: str, registration: Registration, now: float) -> None:
        """``registration`` (from :meth:`outgoing`) goes to ``recipient`` at ``now``: note when it carried
        table content (:meth:`told_within`)."""
        if not registration.elided:
            self._told[recipient] = now

    def told_within(self, peer_id: str, now: float, seconds: float) -> bool:
        """Whether ``peer_id`` was sent our table (whole or a delta) less than ``seconds`` ago."""
        told = self._told.get(peer_id)
        return told is not None and now - told < seconds

    def holds(self, peer_id: str, digest: str) -> bool:
        """Whether ``peer_id``'s last registration said it holds our table of ``digest``: a renewal
        would tell it nothing new (the groom tick then renews less often, ``Peer.renewal_due``)."""
        return self._peer_holds.get(peer_id) == digest

    def forget(self, peer_id: str) -> None:
        """The peer was removed: the next registration with it starts from its full table."""
        self._held.pop(peer_id, None)
        self._peer_holds.pop(peer_id, None)
        self._told.pop(peer_id, None)

    def __len__(self) -> int:
        return len(self._held.keys() | self._peer_holds.keys() | self._told.keys())
