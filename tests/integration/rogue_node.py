"""A compromised tunmesh node for the spoofing test: it holds the cluster secret and joins normally, but its
transmit-side source check also accepts node 2's overlay address (100.64.0.2), so packets claiming that
source leave through its links. The receiving node must drop them (source not within the sender's
authenticated addresses) and count them. Run like twistd: ``rogue_node.py -n ... tunmesh --config FILE``."""

from __future__ import annotations

import ipaddress
import sys

from tunmesh.dataplane import router

_original_init = router.Router.__init__


def _rogue_init(self, *args, **kwargs):
    kwargs["local_cidrs"] = [*kwargs.get("local_cidrs", ()), ipaddress.ip_network("100.64.0.2/32")]
    _original_init(self, *args, **kwargs)


router.Router.__init__ = _rogue_init  # type: ignore[method-assign]

if __name__ == "__main__":
    from twisted.scripts.twistd import run

    sys.argv[0] = "twistd"
    run()
