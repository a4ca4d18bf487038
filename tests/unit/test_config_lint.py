"""Cross-key lint rules and the secret strength estimate."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import ConfigTestMixin, minimal_data, set_key
from tunmesh.cli import generate_secret
from tunmesh.config.lint import MIN_SECRET_BITS, secret_entropy_bits, secret_problem


class SecretStrengthTests(SynchronousTestCase):
    def test_generated_secrets_pass(self) -> None:
        for _ in range(500):
            secret = generate_secret()
            self.assertEqual(len(secret), 43)
            self.assertIsNone(secret_problem(secret))

    def test_weak_patterns_fail(self) -> None:
        for weak in ("a" * 40, "ab" * 20, "abcdefgh" * 5, "abcdefghijklmnop" * 3,
                     "abcdefghijklmnopqrstuvwxyz012345", "13579bdfhjlnprtvxz" * 2, "0123456789" * 4):
            self.assertLess(secret_entropy_bits(weak), MIN_SECRET_BITS, weak)
            problem = secret_problem(weak)
            assert problem is not None
            self.assertIn("is too weak", problem)
            self.assertNotIn(weak, problem)

    def test_short_fails_even_if_random(self) -> None:
        problem = secret_problem(generate_secret()[:31])
        assert problem is not None
        self.assertIn("too short: 31 characters", problem)

    def test_mixed_32_chars_pass(self) -> None:
        self.assertIsNone(secret_problem("Qx7vR2mN9pL4kT8wZ3yB6cF1hJ5dG0sA"))

    def test_empty(self) -> None:
        self.assertEqual(secret_entropy_bits(""), 0.0)


class LintRuleTests(ConfigTestMixin, SynchronousTestCase):
    def test_node_address_outside_network(self) -> None:
        data = set_key(minimal_data(), "networking/ipv4/node_address_cidr", "10.11.0.5/24")
        self.assertEqual(self.errors_of(data), [
            "tun_mesh/networking/ipv4/node_address_cidr: address 10.11.0.5 is not inside network_cidr 10.10.0.0/16"])

    def test_node_prefix_shorter_than_network(self) -> None:
        data = set_key(minimal_data(), "networking/ipv4/node_address_cidr", "10.10.1.5/8")
        self.assertEqual(len(errors := self.errors_of(data)), 1)
        self.assertIn("prefix /8 is shorter than network_cidr's /16", errors[0])

    def test_network_and_broadcast_address(self) -> None:
        for addr, word in (("10.10.0.0/24", "network"), ("10.10.255.255/24", "broadcast")):
            data = set_key(minimal_data(), "networking/ipv4/node_address_cidr", addr)
            self.assertEqual(self.errors_of(data), [
                f"tun_mesh/networking/ipv4/node_address_cidr: address {addr.split('/')[0]} is the {word} "
                "address of 10.10.0.0/16"])

    def test_ipv6_rules(self) -> None:
        base = "networking/ipv6"
        for node, text in (("fd01::5/64", "is not inside network_cidr"),
                           ("fd00:1::/64", "is the network address"),
                           ("fd00:1::5/48", "prefix /48 is shorter")):
            data = set_key(minimal_data(), base, {"network_cidr": "fd00:1::/64", "node_address_cidr": node})
            errors = self.errors_of(data)
            self.assertEqual(len(errors), 1, errors)
            self.assertTrue(errors[0].startswith(f"tun_mesh/{base}/node_address_cidr: "), errors[0])
            self.assertIn(text, errors[0])

    def test_ipv6_needs_mtu_1280(self) -> None:
        data = set_key(minimal_data(), "networking/ipv6", {"network_cidr": "fd00::/64",
                                                           "node_address_cidr": "fd00::5/64"})
        set_key(data, "networking/mtu", 1000)
        self.assertEqual(self.errors_of(data), ["tun_mesh/networking/mtu: 1000 is below 1280, the IPv6 minimum MTU"])
        set_key(data, "networking/mtu", 1280)
        self.assertEqual(self.load(data).networking.mtu, 1280)

    def test_stale_threshold(self) -> None:
        data = set_key(minimal_data(), "process/timing/registrations", {
            "local": {"reregistration_interval": 10, "stale_threshold": 10},
            "mesh": {"reregistration_interval": "2m", "stale_threshold": "1m"}})
        self.assertEqual(self.errors_of(data), [
            "tun_mesh/process/timing/registrations/local/stale_threshold: 10 s must be greater than "
            "reregistration_interval (10 s)",
            "tun_mesh/process/timing/registrations/mesh/stale_threshold: 60 s must be greater than "
            "reregistration_interval (120 s)"])

    def test_validity_windows(self) -> None:
        data = set_key(minimal_data(), "process/timing/auth", {"early_validity_window": 30, "validity_window": 30,
                                                               "session_max_age": 50})
        self.assertEqual(self.errors_of(data), [
            "tun_mesh/process/timing/auth/validity_window: 30 s must be greater than early_validity_window (30 s)",
            "tun_mesh/process/timing/auth/session_max_age: 50 s must be at least twice validity_window (30 s)"])

    def test_root_refused(self) -> None:
        data = set_key(minimal_data(), "process/uid", 0)
        set_key(data, "process/gid", 0)
        errors = self.errors_of(data)
        self.assertEqual([e.split(":")[0] for e in errors], ["tun_mesh/process/uid", "tun_mesh/process/gid"])
        self.assertIn("must not be 0 (root)", errors[0])

    def test_connection_limits(self) -> None:
        data = set_key(minimal_data(), "control_api/limits", {"max_connections": 4, "max_connections_per_peer": 5})
        self.assertEqual(self.errors_of(data), [
            "tun_mesh/control_api/limits/max_connections_per_peer: 5 is above max_connections (4)"])

    def test_url_length_limit(self) -> None:
        long_url = "https://" + "a" * 80 + ".example"
        data = set_key(minimal_data(), "clustering/limits/max_url_length", 64)
        set_key(data, "clustering/bootstrap_groups/default/bootstrap_node_urls", ["https://b.example", long_url])
        self.assertEqual(self.errors_of(data), [
            "tun_mesh/clustering/bootstrap_groups/default/bootstrap_node_urls/1: is longer than "
            "limits.max_url_length (64)"])

    def test_weak_secret_rejected_at_load(self) -> None:
        data = set_key(minimal_data(), "clustering/auth/secret", "x" * 64)
        errors = self.errors_of(data)
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith("tun_mesh/clustering/auth/secret: is too weak: about 0 bits"))
