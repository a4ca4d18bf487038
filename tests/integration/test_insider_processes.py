"""An insider holding the cluster secret tries to evict a live node (issue 12, defect 2; contract W6).

Three real nodes in three namespaces. From node 3's namespace, a process that holds the cluster secret
registers with node 1 under a fresh node id at node 2's URL and another overlay address, again and again.
Node 1 answers 409 each time (a claim alone never evicts a live node; it probes node 2's URL, which answers
with node 2's own id), node 2 stays in node 1's view, and a ping from node 1 to node 2 over the overlay
running through the whole attack loses nothing.
"""

from __future__ import annotations

import json
import re
import sys

from twisted.trial.unittest import TestCase

from tests.integration.cluster import SLOW_STALE, overlay_v4, started_mesh
from tests.netns import requires_root_netns

#: Run in node 3's namespace: signs registrations with the cluster secret as a made-up node whose
#: listen_url is node 2's, and prints the HTTP status of each.
CLAIMANT = r"""
import json, sys, time
from pathlib import Path
from tunmesh import ctlquery
from tunmesh.auth.cluster import ClusterAuthority
from tunmesh.mesh.exchange import REGISTER_PATH
from tunmesh.tls.contexts import CERT_FILE_KEY
import uuid

secret_file, cert_file, target_url, victim_url, count = sys.argv[1:6]
secret = open(secret_file).read().strip()

class Clock:
    def seconds(self):
        return time.time()

node = str(uuid.uuid4())
authority = ClusterAuthority(secret.encode(), node, Clock())
for seq in range(1, int(count) + 1):
    body = json.dumps({
        "local": {
            "id": node, "listen_url": victim_url,
            "network_addresses": {"ipv4": {"cidr": "100.64.0.0/24"}},
            "node_addresses": {"ipv4": {"cidr": "100.64.0.99/24"}},
        },
        "remote": [], "stamp": seq, "seq": seq,
    }).encode()
    # A channel-bound request, as a real node sends it (the insider holds the secret and a trusted cert).
    answer = ctlquery.request(
        target_url, "POST", REGISTER_PATH, body, authority, Path(cert_file), False, CERT_FILE_KEY, 5
    )
    print(answer.status, flush=True)
    time.sleep(0.5)
"""


@requires_root_netns
class InsiderEvictionTests(TestCase):
    timeout = 180

    def test_claim_on_a_live_nodes_url_is_refused_and_traffic_uninterrupted(self) -> None:
        with started_mesh(3, "e", SLOW_STALE) as (cluster, ids):
            ping = cluster.ns(1).popen(
                ["ping", "-n", "-q", "-c", "100", "-i", "0.1", overlay_v4(2)], stdout=-1, stderr=-1, text=True
            )
            secret = str(cluster.workdir / "cluster.secret")
            claim = cluster.ns(3).run(
                [sys.executable, "-c", CLAIMANT, secret, str(cluster.workdir / "cert.pem"), "https://198.18.0.1:4567",
                 "https://198.18.0.2:4567", "10"],
                timeout=60,
            )
            out, _ = ping.communicate(timeout=60)
            statuses = claim.stdout.split()
            self.assertEqual(statuses, ["409"] * 10, claim.stderr)
            self.assertIn(ids[2], cluster.peers_of(1))
            self.assertEqual(len(cluster.peers_of(1)), 2)
            self.assertEqual(cluster.metric(1, "tunmesh_mesh_peers_removed_total"), 0)
            self.assertEqual(
                cluster.metric(1, "tunmesh_mesh_registrations_total", direction="in", result="url_conflict"), 10
            )
            m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
            self.assertIsNotNone(m, out)
            assert m is not None
            sys.stderr.write(f"\ninsider eviction: 10 claims answered {sorted(set(statuses))}, ping {m.group(0)}\n")
            self.assertEqual(m.group(1), m.group(2), out)
            self.assertIn(ids[2], json.dumps(cluster.peer_view(1)["peers"]))
