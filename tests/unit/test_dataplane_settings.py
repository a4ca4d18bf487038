"""``DataPlaneSettings.from_config``: the one place the data plane's config keys are read."""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import ConfigTestMixin, del_key, minimal_data, set_key
from tunmesh.dataplane.settings import DataPlaneSettings


class DataPlaneSettingsTests(ConfigTestMixin, SynchronousTestCase):
    def test_minimal_config_gives_the_defaults_of_the_config_reference(self) -> None:
        settings = DataPlaneSettings.from_config(self.load(minimal_data()))
        self.assertEqual(settings.ipv4_address, ipaddress.IPv4Interface("10.10.1.5/24"))
        self.assertEqual(settings.ipv4_network, ipaddress.IPv4Network("10.10.0.0/16"))
        self.assertIsNone(settings.ipv6_address)
        self.assertIsNone(settings.ipv6_network)
        self.assertIsNone(settings.peer_metrics_ttl)  # monitoring is off by default
        # 1 s request timeout: the link connect deadline is five of them
        self.assertEqual(settings.link_connect_timeout, 5.0)
        self.assertEqual(settings.packet_expiration, 0.1)

    def test_ipv6_family_and_per_peer_metrics_when_prometheus_exports_them(self) -> None:
        data = minimal_data()
        set_key(data, "networking/ipv6", {"network_cidr": "fd00:10::/48", "node_address_cidr": "fd00:10::5/64"})
        set_key(data, "monitoring/method", "prometheus")
        set_key(data, "monitoring/enable_node_packet_metrics", True)
        settings = DataPlaneSettings.from_config(self.load(data))
        self.assertEqual(settings.ipv6_address, ipaddress.IPv6Interface("fd00:10::5/64"))
        self.assertEqual(settings.ipv6_network, ipaddress.IPv6Network("fd00:10::/48"))
        self.assertEqual(settings.peer_metrics_ttl, 3600.0)

    def test_datagram_path_on_and_polling_off_by_default_and_configurable(self) -> None:
        settings = DataPlaneSettings.from_config(self.load(minimal_data()))
        self.assertEqual((settings.datagrams, settings.poll_window), (True, 0.0))
        data = set_key(minimal_data(), "networking/datagrams", False)
        set_key(data, "networking/poll_window", "0.0005")
        settings = DataPlaneSettings.from_config(self.load(data))
        self.assertEqual((settings.datagrams, settings.poll_window), (False, 0.0005))

    def test_a_poll_window_out_of_range_names_its_key(self) -> None:
        data = set_key(minimal_data(), "networking/poll_window", 0.5)
        with self.assertRaises(Exception) as raised:
            self.load(data)
        self.assertIn("networking/poll_window", str(raised.exception))

    def test_per_peer_metrics_need_the_prometheus_endpoint(self) -> None:
        data = set_key(minimal_data(), "monitoring/enable_node_packet_metrics", True)
        self.assertIsNone(DataPlaneSettings.from_config(self.load(data)).peer_metrics_ttl)

    def test_an_unclaimed_address_is_refused_with_its_key(self) -> None:
        cfg = self.load(del_key(minimal_data(), "networking/ipv4/node_address_cidr"))
        with self.assertRaises(ValueError) as raised:
            DataPlaneSettings.from_config(cfg)
        self.assertIn("tun_mesh/networking/ipv4/node_address_cidr", str(raised.exception))

    def test_settings_are_frozen(self) -> None:
        settings = DataPlaneSettings.from_config(self.load(minimal_data()))
        with self.assertRaises(AttributeError):
            settings.mtu = 9000  # type: ignore[misc]
