"""``/health`` tells the truth about the TUN device (issue 12, defect 3a), with a real node.

The TUN device of a running node is deleted from outside (``ip link del``, as a confused operator or a
CNI plugin might): the node stops forwarding, and its liveness must say so (503, ``tun: false``) so that a
liveness probe restarts it, instead of answering ``tun: true`` forever.
"""

from __future__ import annotations

import json
import time

from twisted.trial.unittest import TestCase

from tests.integration.cluster import SLOW_STALE, started_mesh, wait_until
from tests.netns import requires_root_netns


@requires_root_netns
class TunHealthTests(TestCase):
    timeout = 120

    def test_deleted_tun_turns_liveness_false(self) -> None:
        with started_mesh(2, "h", SLOW_STALE) as (cluster, _ids):
            node = cluster.nodes[2]
            code, body = node.get("/health")
            self.assertEqual(code, 200, body)
            # The certificate's expiry is exported (issue 12, 3b): the test cert is valid for years.
            expiry = cluster.metric(2, "tunmesh_cert_expiry_timestamp_seconds", which="node")
            self.assertGreater(expiry, time.time() + 300 * 86400)
            links = cluster.ns(2).run(["ip", "-j", "link", "show", "type", "tun"]).stdout
            names = [link["ifname"] for link in json.loads(links)]
            self.assertEqual(len(names), 1, links)
            # Traffic over it first, so the reader is registered and active.
            cluster.ns(1).run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "100.64.0.2"], check=False)
            cluster.ns(2).run(["ip", "link", "del", names[0]])
            started = time.monotonic()
            wait_until(lambda: node.get("/health")[0] == 503, 20, "/health to fail", cluster.logs)
            code, body = node.get("/health")
            self.assertEqual(code, 503)
            self.assertIs(json.loads(body)["live"]["tun"], False)
            self.assertIn("no longer forwarding", node.log_tail(80))
            print(f"\n/health turned 503 {time.monotonic() - started:.1f}s after the TUN was deleted: {body}")
