"""Pieces of the node composition that run without root: the bootstrap-list reloader, dynamic addressing."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import ipv4, make_files, minimal_data, set_key
from tunmesh.config import ConfigError, load_config
from tunmesh.mesh.structs import NodeInfo
from tunmesh.service import makeService, reloader
from tunmesh.testing import FakeTun
from tunmesh.tls.certs import write_self_signed


class ReloaderTests(SynchronousTestCase):
    def write(self, base: Path, urls: list[str], reload: bool = True) -> Path:
        data = minimal_data()
        set_key(data, "clustering/reload_config_on_bootstrap", reload)
        set_key(data, "clustering/bootstrap_groups", {"g": {"bootstrap_node_urls": urls}})
        path = base / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        make_files(self.base)

    def test_reload_reads_the_file_again(self) -> None:
        path = self.write(self.base, ["https://198.18.0.1:4567/"])
        reload = reloader(load_config(path, env={}), path)
        self.assertIsNotNone(reload)
        self.write(self.base, ["https://198.18.0.2:4567/", "https://198.18.0.3:4567/"])
        groups = reload()  # type: ignore[misc]
        self.assertEqual([(g.name, len(g.urls)) for g in groups], [("g", 2)])
        self.assertIn("198.18.0.3", groups[0].urls[1])

    def test_broken_file_raises_config_error_for_membership_to_log(self) -> None:
        path = self.write(self.base, ["https://198.18.0.1:4567/"])
        reload = reloader(load_config(path, env={}), path)
        path.write_text("tun_mesh: [")
        self.assertRaises(ConfigError, reload)

    def test_off_unless_configured(self) -> None:
        path = self.write(self.base, ["https://198.18.0.1:4567/"], reload=False)
        self.assertIsNone(reloader(load_config(path, env={}), path))


class RecordingSetter:
    """An ``AddressSetter`` that records what the node asked for."""

    def __init__(self) -> None:
        self.moves: list[str] = []
        self.closed = False

    def set_address(self, address: Any) -> None:
        self.moves.append(str(address))

    def close(self) -> None:
        self.closed = True


class DynamicAddressingServiceTests(SynchronousTestCase):
    """makeService without node_address_cidr: the TUN gets the claimed address, and a move reaches the
    router and the TUN (through the setter) without root."""

    def build(self, node_address: bool) -> tuple[Any, list[Any], RecordingSetter]:
        base = Path(self.mktemp()).resolve()
        (base / "ssl").mkdir(parents=True)
        write_self_signed(base / "ssl" / "cert.pem", base / "ssl" / "key.pem")
        data = minimal_data()
        if not node_address:
            del data["tun_mesh"]["networking"]["ipv4"]["node_address_cidr"]
        path = base / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        opened: list[Any] = []

        def open_tun(networking: Any) -> FakeTun:
            opened.append(networking)
            tun = FakeTun()
            self.addCleanup(tun.close)
            return tun

        setter = RecordingSetter()
        top = makeService(load_config(path, env={}), MemoryReactorClock(), open_tun, path, address_setter=setter)
        return top, opened, setter

    def test_configured_address_needs_no_addressing(self) -> None:
        top, opened, _ = self.build(node_address=True)
        self.assertEqual(str(opened[0].ipv4.node_address_cidr), "10.10.1.5/24")
        self.assertNotIn("addressing", [s.name for s in top])

    def test_tun_router_and_registration_follow_the_claimed_address(self) -> None:
        top, opened, setter = self.build(node_address=False)
        follower = top.getServiceNamed("addressing")
        claimer = follower.addressing
        first = claimer.addresses()["ipv4"]
        self.assertEqual(opened[0].ipv4.node_address_cidr, first)
        self.assertEqual(first.network, ipaddress.ip_network("10.10.0.0/16"))
        # A configured node registers our address: it wins, we move.
        rival = NodeInfo("rival", "https://rival.example:4567", {}, {"ipv4": first})
        membership = top.getServiceNamed("mesh").membership
        membership.inbound.resolve_address_claims(rival)
        moved = claimer.addresses()["ipv4"]
        self.assertNotEqual(moved, first)
        self.assertEqual(setter.moves, [str(moved)])
        self.assertEqual(membership.local.node_addresses["ipv4"], moved)
        router = follower.router
        router.routes.set_peer("p", ["10.10.9.9/32"])
        to_new, to_old = ipv4("10.10.9.9", str(moved.ip)), ipv4("10.10.9.9", str(first.ip))
        self.assertEqual(router.accept_inbound("p", [to_new, to_old]), [to_new])
        self.assertFalse(follower.failed)
        top.getServiceNamed("addressing").stopService()
        self.assertTrue(setter.closed)

    def test_membership_knows_the_claimed_family_is_not_configured(self) -> None:
        top, _opened, _setter = self.build(node_address=False)
        settings = top.getServiceNamed("mesh").membership.settings
        self.assertEqual(dict(settings.node_addresses), {})
