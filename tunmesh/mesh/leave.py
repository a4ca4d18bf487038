"""``Leave``: telling our peers that this node leaves (service stop).

A component of :class:`tunmesh.mesh.membership.Membership` (see there); the leave a peer announces to
us is answered by :class:`tunmesh.mesh.inbound.Inbound`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, TimeoutError, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from tunmesh.auth.errors import AuthError
from tunmesh.mesh.component import Component
from tunmesh.mesh.exchange import leave_body, leave_path

#: how long a stopping node waits for its peers to acknowledge that it leaves
LEAVE_TIMEOUT = 2.0


class Leave(Component):
    """Sends our leave to every peer we hold a session with; owns no state between stops."""

    log = Logger()

    def leave(self, timeout: float = LEAVE_TIMEOUT) -> Deferred[int]:
        """Tell every peer we hold a session with that we leave (service stop).

        Best effort and bounded: fires with the number of peers that acknowledged, after at most
        ``timeout`` seconds; peers that miss it groom us as usual.
        """
        path = leave_path(self.node_id)
        body = leave_body(self.node_id)
        requests = []
        for peer in list(self.pool):
            if self.sessions.outbound(peer.id) is None:
                continue
            try:
                request = self.membership.session_auth.sign_request(peer.id, "POST", path, body)
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
