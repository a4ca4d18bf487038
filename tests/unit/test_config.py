"""Loading config: option types, group semantics, errors, env overrides, secrets, paths and the dump."""

from __future__ import annotations

import ipaddress
import operator
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import (
    SAMPLE_YAML,
    SECRET,
    ConfigTestMixin,
    del_key,
    make_files,
    minimal_data,
    set_key,
)
from tunmesh.config import (
    ConfigError,
    ConfigErrors,
    dump_config,
    load_config,
    load_config_data,
    resolve_config_path,
)
from tunmesh.config.errors import raise_collected
from tunmesh.config.tree import TunMeshConfig

OTHER_SECRET = "Zy8wX3vU6tS1rQ4pO7nM0lK9jI2hG5fEdCbA"


class ErrorClassTests(SynchronousTestCase):
    def test_config_error_str(self) -> None:
        e = ConfigError("tun_mesh/a/b", "bad thing")
        self.assertEqual(str(e), "tun_mesh/a/b: bad thing")
        self.assertEqual((e.path, e.message), ("tun_mesh/a/b", "bad thing"))
        self.assertEqual(e.errors, (e,))

    def test_config_error_without_path(self) -> None:
        self.assertEqual(str(ConfigError("", "file.yaml: broken")), "file.yaml: broken")

    def test_config_errors_lines(self) -> None:
        a, b = ConfigError("tun_mesh/a", "x"), ConfigError("tun_mesh/b", "y")
        e = ConfigErrors([a, b])
        self.assertIsInstance(e, ConfigError)
        self.assertEqual(e.errors, (a, b))
        self.assertEqual(str(e), "tun_mesh/a: x\ntun_mesh/b: y")

    def test_config_errors_needs_one(self) -> None:
        self.assertRaises(ValueError, ConfigErrors, [])

    def test_raise_collected(self) -> None:
        raise_collected([])
        one = ConfigError("p", "m")
        self.assertIs(self.assertRaises(ConfigError, raise_collected, [one]), one)
        many = self.assertRaises(ConfigErrors, raise_collected, [one, ConfigError("q", "n")])
        self.assertEqual(len(many.errors), 2)


class MinimalConfigTests(ConfigTestMixin, SynchronousTestCase):
    def test_minimal_loads_with_defaults(self) -> None:
        cfg = self.load(minimal_data())
        self.assertIsInstance(cfg, TunMeshConfig)
        self.assertEqual(cfg.config_version, "1.1")
        self.assertEqual(cfg.clustering.auth.secret, SECRET)
        self.assertIsNone(cfg.clustering.auth.secret_file)
        self.assertEqual(cfg.clustering.auth.pub_key_size, 2048)
        self.assertEqual(cfg.clustering.bootstrap_groups["default"].bootstrap_retries, -1)
        self.assertEqual(
            cfg.clustering.bootstrap_groups["default"].bootstrap_node_urls, ("https://node2.example:4567",)
        )
        self.assertFalse(cfg.clustering.reload_config_on_bootstrap)
        self.assertEqual(cfg.clustering.limits.max_nodes, 256)
        self.assertEqual(cfg.clustering.limits.max_cidrs_per_node, 16)
        self.assertEqual(cfg.clustering.limits.max_url_length, 2048)
        self.assertEqual(cfg.clustering.limits.max_concurrent_bootstraps, 8)
        self.assertEqual(cfg.clustering.limits.peer_networks, ())
        self.assertEqual(cfg.control_api.listen_address, "0.0.0.0")
        self.assertEqual(cfg.control_api.listen_port, 4567)
        self.assertEqual(cfg.control_api.max_batch_size, 64)
        self.assertEqual(cfg.control_api.ssl.cert_file_path, self.base / "ssl" / "cert.pem")
        self.assertIsNone(cfg.control_api.ssl.ca_file_path)
        self.assertFalse(cfg.control_api.ssl.verify_hostname)
        self.assertEqual(cfg.control_api.limits.header_timeout, 10.0)
        self.assertEqual(cfg.control_api.limits.body_timeout, 30.0)
        self.assertEqual(cfg.control_api.limits.max_connections_per_peer, 32)
        self.assertEqual(cfg.control_api.limits.max_connections, 1024)
        self.assertEqual(cfg.logging.level, "info")
        self.assertEqual(cfg.monitoring.method, "none")
        self.assertFalse(cfg.monitoring.enable_node_packet_metrics)
        self.assertEqual(cfg.monitoring.metric_ttl, 3600.0)
        self.assertEqual(dict(cfg.monitoring.prometheus.base_labels), {})
        self.assertEqual(cfg.networking.tun_device_id, "tun1")
        self.assertEqual(cfg.networking.mtu, 1400)
        self.assertTrue(cfg.networking.offload)
        self.assertEqual(cfg.networking.ipv4.network_cidr, ipaddress.IPv4Network("10.10.0.0/16"))
        self.assertEqual(cfg.networking.ipv4.node_address_cidr, ipaddress.IPv4Interface("10.10.1.5/24"))
        self.assertFalse(cfg.networking.ipv4.enable_broadcast)
        self.assertIsNone(cfg.networking.ipv6)
        self.assertEqual(cfg.process.uid, 1000)
        self.assertIsNone(cfg.process.gid)
        self.assertEqual(cfg.process.ipc.group.key_range_min, 0x80000000)
        t = cfg.process.timing
        self.assertEqual(t.request_timeout, 1.0)
        self.assertEqual((t.auth.session_max_age, t.auth.early_validity_window, t.auth.validity_window),
                         (3600.0, 5.0, 30.0))
        r = t.registrations
        self.assertEqual((r.groom_interval, r.startup_grace, r.bootstrap_retry_interval), (5.0, 0.0, 15.0))
        self.assertEqual((r.local.reregistration_interval, r.local.stale_threshold), (5.0, 30.0))
        self.assertEqual((r.mesh.reregistration_interval, r.mesh.stale_threshold), (30.0, 120.0))
        self.assertEqual((t.network.local.packet_expiration, t.network.mesh.packet_expiration), (0.1, 0.1))
        self.assertEqual((t.tun_handler.heartbeat_interval, t.tun_handler.fault_delay), (1.0, 1.0))

    def test_value_is_frozen(self) -> None:
        cfg = self.load(minimal_data())
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, cfg.networking, "mtu", 9000)
        self.assertRaises(TypeError, operator.setitem, cfg.clustering.bootstrap_groups, "x", None)

    def test_secret_not_in_repr(self) -> None:
        cfg = self.load(minimal_data())
        self.assertNotIn(SECRET, repr(cfg))

    def test_sample_in_original_format_loads_unchanged(self) -> None:
        path = self.base / "config.1.yaml"
        path.write_text(SAMPLE_YAML)
        cfg = load_config(path, env={})
        self.assertEqual(cfg.logging.level, "debug")
        self.assertEqual(cfg.monitoring.method, "prometheus")
        self.assertEqual(dict(cfg.monitoring.prometheus.base_labels), {"env_name": "local_test"})
        assert cfg.networking.ipv4.node_address_cidr is not None
        self.assertEqual(cfg.networking.ipv4.node_address_cidr.network, ipaddress.IPv4Network("192.168.129.0/26"))
        self.assertEqual(cfg.control_api.ssl.key_file_path, self.base / "ssl" / "key.pem")

    def test_process_ipc_accepted(self) -> None:
        data = set_key(minimal_data(), "process/ipc", {"group": {"max_init_attempts": 5, "key_range_min": "0x10",
                                                                 "key_range_max": 0x20}})
        cfg = self.load(data)
        self.assertEqual(cfg.process.ipc.group.max_init_attempts, 5)
        self.assertEqual(cfg.process.ipc.group.key_range_min, 16)

    def test_new_options(self) -> None:
        data = minimal_data()
        set_key(data, "networking/mtu", 9000)
        set_key(data, "networking/offload", False)
        set_key(data, "networking/ipv6", {"network_cidr": "fd00:1::/64", "node_address_cidr": "fd00:1::5/64"})
        set_key(data, "process/gid", 1001)
        set_key(data, "control_api/listen_address", "::")
        set_key(data, "control_api/limits", {"max_connections": 10, "max_connections_per_peer": 2,
                                             "header_timeout": "5s", "body_timeout": "1m"})
        set_key(data, "clustering/limits", {"max_nodes": 3, "peer_networks": ["198.18.0.0/15", "fd00::/8"]})
        cfg = self.load(data)
        self.assertEqual(cfg.networking.mtu, 9000)
        self.assertFalse(cfg.networking.offload)
        assert cfg.networking.ipv6 is not None
        self.assertEqual(cfg.networking.ipv6.node_address_cidr, ipaddress.IPv6Interface("fd00:1::5/64"))
        self.assertEqual(cfg.process.gid, 1001)
        self.assertEqual(cfg.control_api.listen_address, "::")
        self.assertEqual(cfg.control_api.limits.body_timeout, 60.0)
        self.assertEqual(cfg.clustering.limits.max_nodes, 3)
        self.assertEqual(
            cfg.clustering.limits.peer_networks,
            (ipaddress.IPv4Network("198.18.0.0/15"), ipaddress.IPv6Network("fd00::/8")),
        )


class GroupSemanticsTests(ConfigTestMixin, SynchronousTestCase):
    def test_null_subgroup_means_defaults(self) -> None:
        data = minimal_data()
        for key in ("logging", "monitoring"):
            data["tun_mesh"][key] = None
        set_key(data, "process/timing", None)
        set_key(data, "monitoring", {"method": "prometheus", "prometheus": None})
        cfg = self.load(data)
        self.assertEqual(cfg.logging.level, "info")
        self.assertEqual(cfg.process.timing.request_timeout, 1.0)
        self.assertEqual(dict(cfg.monitoring.prometheus.base_labels), {})

    def test_prometheus_without_base_labels(self) -> None:
        cfg = self.load(set_key(minimal_data(), "monitoring", {"method": "prometheus"}))
        self.assertEqual(dict(cfg.monitoring.prometheus.base_labels), {})

    def test_unknown_key(self) -> None:
        errors = self.errors_of(set_key(minimal_data(), "logging/colour", "red"))
        self.assertEqual(errors, ["tun_mesh/logging/colour: unknown key; expected one of format, level"])

    def test_missing_required_key(self) -> None:
        errors = self.errors_of(del_key(minimal_data(), "networking/ipv4/network_cidr"))
        self.assertEqual(errors, ["tun_mesh/networking/ipv4/network_cidr: missing required key"])

    def test_missing_required_group(self) -> None:
        errors = self.errors_of(del_key(minimal_data(), "networking/ipv4"))
        self.assertEqual(errors, ["tun_mesh/networking/ipv4: missing required key"])

    def test_optional_group_may_be_absent(self) -> None:
        data = minimal_data()
        self.assertNotIn("logging", data["tun_mesh"])
        self.assertEqual(self.load(data).logging.level, "info")

    def test_group_not_a_mapping(self) -> None:
        errors = self.errors_of(set_key(minimal_data(), "logging", ["debug"]))
        self.assertEqual(errors, ["tun_mesh/logging: must be a mapping, got list"])

    def test_null_leaf_with_default_rejected(self) -> None:
        errors = self.errors_of(set_key(minimal_data(), "control_api/listen_port", None))
        self.assertEqual(
            errors, ["tun_mesh/control_api/listen_port: null value: remove the key to use the default (4567)"]
        )

    def test_null_required_leaf_rejected(self) -> None:
        errors = self.errors_of(set_key(minimal_data(), "process/uid", None))
        self.assertEqual(errors, ["tun_mesh/process/uid: null value: a value is required"])

    def test_null_bootstrap_groups_and_urls(self) -> None:
        cfg = self.load(set_key(minimal_data(), "clustering/bootstrap_groups", None))
        self.assertEqual(dict(cfg.clustering.bootstrap_groups), {})
        cfg = self.load(set_key(minimal_data(), "clustering/bootstrap_groups", {"a": {"bootstrap_node_urls": None}}))
        self.assertEqual(cfg.clustering.bootstrap_groups["a"].bootstrap_node_urls, ())

    def test_bootstrap_groups_key_required(self) -> None:
        errors = self.errors_of(del_key(minimal_data(), "clustering/bootstrap_groups"))
        self.assertEqual(errors, ["tun_mesh/clustering/bootstrap_groups: missing required key"])

    def test_bootstrap_group_error_keeps_map_key(self) -> None:
        data = set_key(minimal_data(), "clustering/bootstrap_groups/east",
                       {"bootstrap_node_urls": [], "bootstrap_retries": -2})
        self.assertEqual(
            self.errors_of(data),
            ["tun_mesh/clustering/bootstrap_groups/east/bootstrap_retries: -2 is out of range: must be at least -1"],
        )

    def test_bootstrap_group_bad_name_and_missing_urls(self) -> None:
        data = set_key(minimal_data(), "clustering/bootstrap_groups", {"bad name!": {"bootstrap_node_urls": []},
                                                                       "ok": {}})
        errors = self.errors_of(data)
        self.assertEqual(len(errors), 2)
        self.assertIn("tun_mesh/clustering/bootstrap_groups: key 'bad name!' is not valid", errors[0])
        self.assertEqual(errors[1], "tun_mesh/clustering/bootstrap_groups/ok/bootstrap_node_urls: missing required key")

    def test_list_item_error_path(self) -> None:
        data = set_key(minimal_data(), "clustering/bootstrap_groups/default/bootstrap_node_urls",
                       ["https://a.example", "http://b.example"])
        self.assertEqual(
            self.errors_of(data),
            ["tun_mesh/clustering/bootstrap_groups/default/bootstrap_node_urls/1: 'http://b.example' must use https"],
        )

    def test_list_not_a_list(self) -> None:
        data = set_key(minimal_data(), "clustering/bootstrap_groups/default/bootstrap_node_urls", "https://a.b")
        self.assertEqual(
            self.errors_of(data),
            ["tun_mesh/clustering/bootstrap_groups/default/bootstrap_node_urls: must be a list, got string"],
        )

    def test_many_errors_collected(self) -> None:
        data = minimal_data()
        set_key(data, "logging/level", "loud")
        set_key(data, "control_api/listen_port", 70000)
        set_key(data, "networking/mtu", "big")
        set_key(data, "process/timing/request_timeout", "2x")
        del_key(data, "clustering/control_api_advertise_url")
        errors = self.errors_of(data)
        self.assertEqual(len(errors), 5, errors)
        self.assertEqual(
            sorted(e.split(":")[0] for e in errors),
            sorted([
                "tun_mesh/clustering/control_api_advertise_url",
                "tun_mesh/control_api/listen_port",
                "tun_mesh/logging/level",
                "tun_mesh/networking/mtu",
                "tun_mesh/process/timing/request_timeout",
            ]),
        )

    def test_top_level_must_be_mapping(self) -> None:
        self.assertEqual(
            self.errors_of(["tun_mesh"]),
            ["the config must be a mapping with a top-level 'tun_mesh' key, got list"],
        )

    def test_top_level_key_required(self) -> None:
        self.assertEqual(self.errors_of({"tunmesh": {}}),
                         ["tun_mesh: missing required top-level key (found 'tunmesh': did you mean tun_mesh?)"])
        self.assertEqual(self.errors_of({"other": {}}), ["tun_mesh: missing required top-level key"])

    def test_other_top_level_keys_ignored(self) -> None:
        data = minimal_data()
        data["x-anchors"] = {"a": 1}
        self.assertEqual(self.load(data).process.uid, 1000)

    def test_null_tun_mesh_reports_missing_required(self) -> None:
        errors = self.errors_of({"tun_mesh": None})
        self.assertIn("tun_mesh/config_version: missing required key", errors)
        self.assertIn("tun_mesh/clustering: missing required key", errors)


class TypeTests(ConfigTestMixin, SynchronousTestCase):
    """Each option type with good and bad values, through a real option of that type."""

    def value(self, path: str, value: Any) -> Any:
        cfg: Any = self.load(set_key(minimal_data(), path, value))
        for key in path.split("/"):
            cfg = cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)
        return cfg

    def error(self, path: str, value: Any) -> str:
        errors = self.errors_of(set_key(minimal_data(), path, value))
        self.assertEqual(len(errors), 1, errors)
        prefix = f"tun_mesh/{path}: "
        self.assertTrue(errors[0].startswith(prefix), errors[0])
        return errors[0][len(prefix):]

    # bool
    def test_bool(self) -> None:
        for raw, expected in ((True, True), (False, False), ("TRUE", True), ("false", False), ("True", True)):
            self.assertIs(self.value("control_api/ssl/verify_hostname", raw), expected)

    def test_bool_bad(self) -> None:
        for raw in ("yes!", 1, 0, "on", [True]):
            self.assertIn("must be true or false", self.error("control_api/ssl/verify_hostname", raw))

    # int / uint
    def test_int(self) -> None:
        self.assertEqual(self.value("clustering/bootstrap_groups/default/bootstrap_retries", -1), -1)
        self.assertEqual(self.value("control_api/listen_port", "0x10"), 16)
        self.assertEqual(self.value("control_api/listen_port", "1_000"), 1000)
        self.assertEqual(self.value("control_api/listen_port", " 443 "), 443)

    def test_int_rejects_floats_bools_text(self) -> None:
        self.assertEqual(self.error("control_api/listen_port", 1.5), "must be an integer, got number 1.5")
        self.assertEqual(self.error("control_api/listen_port", 443.0), "must be an integer, got number 443.0")
        self.assertEqual(self.error("control_api/listen_port", True), "must be an integer, got boolean True")
        self.assertEqual(self.error("control_api/listen_port", "80a"), "must be an integer, got string '80a'")
        self.assertEqual(self.error("control_api/listen_port", "1.5"), "must be an integer, got string '1.5'")

    def test_int_range_messages(self) -> None:
        self.assertEqual(self.error("control_api/listen_port", 0), "0 is out of range: must be between 1 and 65535")
        self.assertEqual(
            self.error("control_api/listen_port", 65536), "65536 is out of range: must be between 1 and 65535"
        )
        self.assertEqual(
            self.error("control_api/max_batch_size", 1025), "1025 is out of range: must be between 1 and 1024"
        )
        self.assertEqual(self.error("process/uid", -1), "-1 is out of range: must be between 0 and 4294967294")
        self.assertEqual(
            self.error("clustering/auth/pub_key_size", 1024), "1024 is out of range: must be at least 2048"
        )
        self.assertEqual(
            self.error("process/ipc/group/key_range_min", 2**32),
            "4294967296 is out of range: must be between 0x0 and 0xffffffff",
        )

    # string
    def test_tun_device_id(self) -> None:
        self.assertEqual(self.value("networking/tun_device_id", "tm0.mesh-a_1"), "tm0.mesh-a_1")
        self.assertEqual(self.value("networking/tun_device_id", "x" * 15), "x" * 15)

    def test_tun_device_id_bad(self) -> None:
        self.assertEqual(self.error("networking/tun_device_id", "x" * 16),
                         "length 16 is above the maximum of 15")
        self.assertEqual(self.error("networking/tun_device_id", ""), "length 0 is below the minimum of 1")
        for bad in ("tun/1", "tun 1", "tun:1", ".", "..", "tün"):
            self.assertIn("is not valid: a Linux interface name", self.error("networking/tun_device_id", bad))
        self.assertEqual(self.error("networking/tun_device_id", ["a"]), "must be a string, got list")

    def test_string_number_taken_as_text(self) -> None:
        self.assertEqual(self.value("networking/tun_device_id", 7), "7")

    # timing
    def test_timing_forms(self) -> None:
        path = "process/timing/request_timeout"
        self.assertEqual(self.value(path, 2), 2.0)
        self.assertEqual(self.value(path, 2.5), 2.5)
        self.assertEqual(self.value(path, "3"), 3.0)
        self.assertEqual(self.value(path, "1.5s"), 1.5)
        self.assertEqual(self.value(path, "2m"), 120.0)
        self.assertEqual(self.value(path, "1H"), 3600.0)
        self.assertEqual(self.value(path, " 4 S "), 4.0)
        self.assertEqual(self.value("process/timing/auth/session_max_age", "0.025d"), 2160.0)

    def test_timing_range_uses_rng_once(self) -> None:
        data = set_key(minimal_data(), "process/timing/auth/session_max_age", "50..60m")
        expected = random.Random(7).uniform(3000.0, 3600.0)
        self.assertEqual(self.load(data, seed=7).process.timing.auth.session_max_age, expected)
        values = {self.load(data, seed=s).process.timing.auth.session_max_age for s in range(20)}
        self.assertTrue(all(3000.0 <= v <= 3600.0 for v in values))
        self.assertGreater(len(values), 1)

    def test_timing_range_equal_ends(self) -> None:
        self.assertEqual(self.value("process/timing/request_timeout", "2..2s"), 2.0)

    def test_timing_bad(self) -> None:
        path = "process/timing/request_timeout"
        self.assertEqual(self.error(path, 0.4), "0.4 is out of range: must be between 0.5 s and 3600 s")
        self.assertEqual(self.error(path, "2h"), "'2h' is out of range: must be between 0.5 s and 3600 s")
        self.assertEqual(self.error(path, "3..2"), "range '3..2' has its lower end above its upper end")
        self.assertEqual(self.error(path, "1..2h"), "'1..2h' is out of range: must be between 0.5 s and 3600 s")
        self.assertIn("is not a timing", self.error(path, "5 minutes"))
        self.assertIn("is not a timing", self.error(path, "-1"))
        self.assertIn("is not a timing", self.error(path, "1..2..3"))
        self.assertIn("must be a number of seconds", self.error(path, True))
        self.assertIn("must be a number of seconds", self.error(path, [1]))
        self.assertEqual(self.error(path, float("nan")), "nan is not a finite number of seconds")

    def test_timing_per_field_bounds(self) -> None:
        self.assertEqual(self.value("process/timing/registrations/startup_grace", 0), 0.0)
        self.assertEqual(self.value("process/timing/network/local/packet_expiration", 0.01), 0.01)
        self.assertIn("must be between 0.01 s and 3600 s",
                      self.error("process/timing/network/mesh/packet_expiration", 0.005))
        self.assertIn("must be between 0.5 s and 300 s", self.error("control_api/limits/header_timeout", 301))

    # url
    def test_url_good(self) -> None:
        path = "clustering/control_api_advertise_url"
        for url in ("https://node1.example:4567", "https://node1.example/", "https://10.0.0.1",
                    "https://[fd00::1]:4567", "HTTPS://Node.Example"):
            self.assertEqual(self.value(path, url), url)

    def test_url_bad(self) -> None:
        path = "clustering/control_api_advertise_url"
        self.assertEqual(self.error(path, "http://node1:4567"), "'http://node1:4567' must use https")
        self.assertEqual(self.error(path, "foo"), "'foo' must use https")
        self.assertEqual(self.error(path, "https://"), "'https://' has no host")
        self.assertEqual(self.error(path, "https://u:p@node1"), "must not contain user information (user:password@)")
        self.assertIn("must not have a query or fragment", self.error(path, "https://node1/?a=1"))
        self.assertIn("must not have a query or fragment", self.error(path, "https://node1#x"))
        self.assertIn("must not have a path", self.error(path, "https://node1/api"))
        self.assertIn("is not a valid URL", self.error(path, "https://node1:99999"))
        self.assertIn("has port 0", self.error(path, "https://node1:0"))
        self.assertIn("whitespace or control characters", self.error(path, "https://no de"))
        self.assertEqual(self.error(path, "https://" + "a" * 2100), "URL length 2108 is above the maximum of 2048")
        self.assertEqual(self.error(path, 5), "must be a URL string, got integer")

    # file
    def test_file_relative_to_config_dir(self) -> None:
        (self.base / "ca.pem").write_text("ca")
        self.assertEqual(self.value("control_api/ssl/ca_file_path", "ca.pem"), self.base / "ca.pem")
        self.assertEqual(self.value("control_api/ssl/ca_file_path", "./ssl/../ca.pem"), self.base / "ca.pem")
        absolute = str(self.base / "ssl" / "cert.pem")
        self.assertEqual(self.value("control_api/ssl/ca_file_path", absolute), Path(absolute))

    def test_file_bad(self) -> None:
        path = "control_api/ssl/ca_file_path"
        self.assertEqual(self.error(path, "nope.pem"), f"{self.base / 'nope.pem'}: does not exist")
        self.assertEqual(self.error(path, "ssl"), f"{self.base / 'ssl'}: is not a regular file")
        self.assertEqual(self.error(path, ""), "must be a file path string, got string")
        self.assertEqual(self.error(path, 3), "must be a file path string, got integer")

    def test_file_unreadable(self) -> None:
        if os.geteuid() == 0:
            # root reads anything, so make the open fail another way: a dangling symlink loop.
            loop = self.base / "loop.pem"
            loop.symlink_to(loop)
            self.assertIn("cannot be examined", self.error("control_api/ssl/key_file_path", "loop.pem"))
        else:  # pragma: no cover - depends on the user running the tests
            f = self.base / "private.pem"
            f.write_text("k")
            f.chmod(0)
            self.assertIn("is not readable", self.error("control_api/ssl/key_file_path", "private.pem"))

    # netaddress
    def test_netaddress_requires_prefix(self) -> None:
        self.assertEqual(
            self.error("networking/ipv4/node_address_cidr", "10.10.1.5"),
            "'10.10.1.5' has no prefix length; write it in CIDR form, e.g. 10.0.0.5/24",
        )
        self.assertEqual(
            self.error("networking/ipv4/network_cidr", "10.10.0.0"),
            "'10.10.0.0' has no prefix length; write it in CIDR form, e.g. 10.0.0.0/24",
        )

    def test_netaddress_bad(self) -> None:
        self.assertEqual(
            self.error("networking/ipv4/network_cidr", "10.10.1.0/16"),
            "'10.10.1.0/16' has host bits set; did you mean 10.10.0.0/16?",
        )
        self.assertIn("is not an IPv4 network", self.error("networking/ipv4/network_cidr", "fd00::/64"))
        self.assertIn("is not a valid IPv4 network", self.error("networking/ipv4/network_cidr", "10.0.0.0/33"))
        self.assertIn("is not a valid IPv4 address with prefix",
                      self.error("networking/ipv4/node_address_cidr", "10.0.300.1/24"))
        self.assertIn("must be an IPv4 network string", self.error("networking/ipv4/network_cidr", 10))

    def test_ipv6_group(self) -> None:
        base = "networking/ipv6"
        errors = self.errors_of(set_key(minimal_data(), base, {"network_cidr": "10.0.0.0/8",
                                                               "node_address_cidr": "fd00::5"}))
        self.assertEqual(len(errors), 2)
        self.assertIn(f"tun_mesh/{base}/network_cidr: '10.0.0.0/8' is not an IPv6 network", errors[0])
        self.assertIn(f"tun_mesh/{base}/node_address_cidr: 'fd00::5' has no prefix length", errors[1])
        # Without node_address_cidr the IPv6 address is claimed dynamically (docs/addressing.md).
        ipv6 = self.load(set_key(minimal_data(), base, {"network_cidr": "fd00::/64"})).networking.ipv6
        assert ipv6 is not None
        self.assertIsNone(ipv6.node_address_cidr)
        self.assertIsNone(self.load(set_key(minimal_data(), base, None)).networking.ipv6)

    def test_peer_networks_bad_item(self) -> None:
        errors = self.errors_of(set_key(minimal_data(), "clustering/limits/peer_networks", ["10.0.0.0/8", "x"]))
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith("tun_mesh/clustering/limits/peer_networks/1: 'x' has no prefix"))

    def test_listen_address(self) -> None:
        self.assertEqual(self.value("control_api/listen_address", "127.0.0.1"), "127.0.0.1")
        self.assertEqual(self.value("control_api/listen_address", "FD00::0001"), "fd00::1")
        self.assertEqual(self.error("control_api/listen_address", "localhost"),
                         "'localhost' is not an IPv4 or IPv6 address")
        self.assertEqual(self.error("control_api/listen_address", "10.0.0.1/8"),
                         "'10.0.0.1/8' is not an IPv4 or IPv6 address")

    # enum
    def test_enum(self) -> None:
        self.assertEqual(self.value("logging/level", "debug"), "debug")
        self.assertEqual(self.value("logging/level", "WARN"), "warn")
        self.assertEqual(self.value("monitoring/method", "prometheus"), "prometheus")
        self.assertEqual(self.error("logging/level", "trace"), "'trace' must be one of error, warn, info, debug")
        self.assertIn("must be one of", self.error("monitoring/method", True))

    # hash
    def test_base_labels(self) -> None:
        labels = self.value("monitoring/prometheus/base_labels", {"env": "prod", "zone": 3})
        self.assertEqual(dict(labels), {"env": "prod", "zone": "3"})

    def test_base_labels_bad(self) -> None:
        path = "monitoring/prometheus/base_labels"
        self.assertIn("key '1bad' is not valid: a Prometheus label name", self.error(path, {"1bad": "x"}))
        self.assertEqual(self.error(path, {"node_id": "x"}), "key 'node_id' is reserved")
        self.assertEqual(self.error(path, ["a"]), "must be a mapping, got list")
        errors = self.errors_of(set_key(minimal_data(), path, {"env": {"nested": 1}}))
        self.assertEqual(errors, [f"tun_mesh/{path}/env: must be a string, got mapping"])

    # version
    def test_version(self) -> None:
        self.assertEqual(self.value("config_version", 1.1), "1.1")
        self.assertEqual(self.value("config_version", "1.1"), "1.1")

    def test_version_bad(self) -> None:
        for bad in ("1.0", 1, "2", 1.2):
            self.assertIn("unknown config version", self.error("config_version", bad))
        self.assertEqual(self.error("config_version", None), "null value: a value is required")
        self.assertEqual(self.error("config_version", [1.1]), "must be a version string, got list")


class SecretTests(ConfigTestMixin, SynchronousTestCase):
    def test_secret_file(self) -> None:
        (self.base / "secret").write_text(SECRET + "\n")
        data = minimal_data()
        set_key(data, "clustering/auth", {"secret_file": "secret"})
        cfg = self.load(data)
        self.assertEqual(cfg.clustering.auth.secret, SECRET)
        self.assertEqual(cfg.clustering.auth.secret_file, self.base / "secret")

    def test_secret_and_secret_file_both(self) -> None:
        (self.base / "secret").write_text(SECRET)
        data = set_key(minimal_data(), "clustering/auth/secret_file", "secret")
        self.assertEqual(self.errors_of(data), ["tun_mesh/clustering/auth: set only one of secret and secret_file"])

    def test_no_secret(self) -> None:
        data = set_key(minimal_data(), "clustering/auth", {})
        self.assertEqual(
            self.errors_of(data),
            ["tun_mesh/clustering/auth/secret: missing: set one of secret or secret_file or secrets "
             "(or the environment variable TUNMESH_CLUSTER_SECRET)"],
        )
        del_key(data, "clustering/auth")
        self.assertEqual(len(self.errors_of(data)), 1)

    def test_single_secret_has_the_default_id(self) -> None:
        auth = self.load(minimal_data()).clustering.auth
        self.assertEqual(dict(auth.accepted_secrets), {"default": SECRET})
        self.assertEqual((auth.signing_id, auth.signing_secret), ("default", SECRET))

    def test_several_secrets_by_id_one_signs(self) -> None:
        (self.base / "new").write_text(OTHER_SECRET + "\n")
        data = set_key(
            minimal_data(),
            "clustering/auth",
            {"secrets": {"old": {"secret": SECRET}, "new": {"secret_file": "new"}}, "signing_secret_id": "new"},
        )
        auth = self.load(data).clustering.auth
        self.assertEqual(dict(auth.accepted_secrets), {"old": SECRET, "new": OTHER_SECRET})
        self.assertEqual((auth.signing_id, auth.signing_secret), ("new", OTHER_SECRET))
        self.assertIsNone(auth.secret)
        dumped = dump_config(self.load(data))
        self.assertNotIn(SECRET, dumped)
        self.assertNotIn(OTHER_SECRET, dumped)

    def test_secrets_need_a_signing_id_among_them(self) -> None:
        data = set_key(minimal_data(), "clustering/auth", {"secrets": {"old": {"secret": SECRET}}})
        errors = self.errors_of(data)
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith("tun_mesh/clustering/auth/signing_secret_id: missing"), errors)
        set_key(data, "clustering/auth/signing_secret_id", "new")
        self.assertEqual(
            self.errors_of(data),
            ["tun_mesh/clustering/auth/signing_secret_id: 'new' is not an id under secrets (ids: old)"],
        )

    def test_secrets_and_the_single_form_are_exclusive(self) -> None:
        data = set_key(minimal_data(), "clustering/auth/secrets", {"old": {"secret": OTHER_SECRET}})
        set_key(data, "clustering/auth/signing_secret_id", "old")
        errors = self.errors_of(data)
        self.assertEqual(len(errors), 1)
        self.assertIn("set either secrets", errors[0])
        del_key(data, "clustering/auth/secret")
        errors = self.errors_of(data, env={"TUNMESH_CLUSTER_SECRET": SECRET})
        self.assertEqual(len(errors), 1)
        self.assertIn("TUNMESH_CLUSTER_SECRET", errors[0])
        self.assertNotIn(SECRET, errors[0])

    def test_bad_secret_ids_and_entries(self) -> None:
        data = set_key(minimal_data(), "clustering/auth", {"secrets": {"no.dots": {"secret": SECRET}}})
        set_key(data, "clustering/auth/signing_secret_id", "no.dots")
        errors = self.errors_of(data)
        self.assertTrue(any("key 'no.dots' is not valid" in e for e in errors), errors)
        data = set_key(
            minimal_data(), "clustering/auth", {"secrets": {"a": {}}, "signing_secret_id": "a"}
        )
        self.assertEqual(
            self.errors_of(data),
            ["tun_mesh/clustering/auth/secrets/a/secret: missing: set one of secret or secret_file"],
        )

    def test_each_secret_is_checked_for_strength_without_echoing_it(self) -> None:
        weak = "password" * 4
        data = set_key(
            minimal_data(),
            "clustering/auth",
            {"secrets": {"old": {"secret": SECRET}, "new": {"secret": weak}}, "signing_secret_id": "old"},
        )
        errors = self.errors_of(data)
        self.assertEqual(len(errors), 1, errors)
        self.assertTrue(errors[0].startswith("tun_mesh/clustering/auth/secrets/new/secret: is too weak"), errors)
        self.assertNotIn(weak, errors[0])
        set_key(data, "clustering/auth/secrets/new/secret", SECRET)
        errors = self.errors_of(data)
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("is the same secret as id", errors[0])
        self.assertNotIn(SECRET, errors[0])

    def test_env_secret_overrides_and_allows_no_auth_group(self) -> None:
        other = "Zy8wX3vU6tS1rQ4pO7nM0lK9jI2hG5fE"
        cfg = self.load(minimal_data(), env={"TUNMESH_CLUSTER_SECRET": other})
        self.assertEqual(cfg.clustering.auth.secret, other)
        cfg = self.load(del_key(minimal_data(), "clustering/auth"), env={"TUNMESH_CLUSTER_SECRET": other})
        self.assertEqual(cfg.clustering.auth.secret, other)

    def test_empty_env_secret_ignored(self) -> None:
        cfg = self.load(minimal_data(), env={"TUNMESH_CLUSTER_SECRET": ""})
        self.assertEqual(cfg.clustering.auth.secret, SECRET)

    def test_secret_file_problems(self) -> None:
        (self.base / "empty").write_text("\n")
        (self.base / "binary").write_bytes(b"\xff\xfe\x00")
        for name, message in (("empty", "is empty"), ("binary", "is not UTF-8 text")):
            data = set_key(minimal_data(), "clustering/auth", {"secret_file": name})
            self.assertEqual(self.errors_of(data),
                             [f"tun_mesh/clustering/auth/secret_file: {self.base / name}: {message}"])
        data = set_key(minimal_data(), "clustering/auth", {"secret_file": "missing"})
        self.assertEqual(self.errors_of(data),
                         [f"tun_mesh/clustering/auth/secret_file: {self.base / 'missing'}: does not exist"])

    def test_secret_never_echoed(self) -> None:
        weak = "hunter2-hunter2-hunter2-hunter2-hunter2"
        short = "tooShortSecretXYZ"
        for raw in (weak, short, ["list", short]):
            data = set_key(minimal_data(), "clustering/auth/secret", raw)
            data["tun_mesh"]["clustering"]["auth"]["extra"] = 1
            errors = "\n".join(self.errors_of(data))
            self.assertNotIn("hunter2", errors)
            self.assertNotIn(short, errors)
        errors = "\n".join(self.errors_of(minimal_data(), env={"TUNMESH_CLUSTER_SECRET": short}))
        self.assertNotIn(short, errors)
        self.assertIn("value hidden", errors)
        (self.base / "weak").write_text(weak)
        data = set_key(minimal_data(), "clustering/auth", {"secret_file": "weak"})
        errors = "\n".join(self.errors_of(data))
        self.assertNotIn("hunter2", errors)
        self.assertIn("tun_mesh/clustering/auth/secret: is too weak", errors)

    def test_secret_never_in_yaml_error(self) -> None:
        path = self.base / "c.yaml"
        path.write_text(SAMPLE_YAML.replace(f"secret: {SECRET}", f"secret: {SECRET}: oops"))
        e = self.assertRaises(ConfigError, load_config, path, {})
        self.assertNotIn(SECRET, str(e))
        path.write_text(SAMPLE_YAML.replace(f"secret: {SECRET}", f"secret: {SECRET}\n      secret: {SECRET}"))
        e = self.assertRaises(ConfigError, load_config, path, {})
        self.assertNotIn(SECRET, str(e))
        self.assertIn("duplicate key 'secret'", str(e))

    def test_dump_redacts(self) -> None:
        cfg = self.load(minimal_data())
        text = dump_config(cfg)
        self.assertNotIn(SECRET, text)
        self.assertEqual(yaml.safe_load(text)["tun_mesh"]["clustering"]["auth"]["secret"], "<redacted>")
        self.assertIn(SECRET, dump_config(cfg, redact=False))


class AdvertiseEnvTests(ConfigTestMixin, SynchronousTestCase):
    def test_env_overrides_file(self) -> None:
        cfg = self.load(minimal_data(), env={"TUNMESH_ADVERTISE_URL": "https://pod-7.example:4567"})
        self.assertEqual(cfg.clustering.control_api_advertise_url, "https://pod-7.example:4567")

    def test_env_replaces_missing_key(self) -> None:
        data = del_key(minimal_data(), "clustering/control_api_advertise_url")
        self.assertEqual(
            self.errors_of(data),
            ["tun_mesh/clustering/control_api_advertise_url: missing required key "
             "(or the environment variable TUNMESH_ADVERTISE_URL)"],
        )
        cfg = self.load(data, env={"TUNMESH_ADVERTISE_URL": "https://pod-7.example"})
        self.assertEqual(cfg.clustering.control_api_advertise_url, "https://pod-7.example")

    def test_bad_env_value_names_variable(self) -> None:
        errors = self.errors_of(minimal_data(), env={"TUNMESH_ADVERTISE_URL": "http://x"})
        self.assertEqual(
            errors,
            ["tun_mesh/clustering/control_api_advertise_url: 'http://x' must use https "
             "(from the environment variable TUNMESH_ADVERTISE_URL)"],
        )


class NodeAddressTests(ConfigTestMixin, SynchronousTestCase):
    """node_address_cidr is optional (dynamic addressing) and the environment overrides it per pod."""

    def test_absent_means_dynamic(self) -> None:
        cfg = self.load(del_key(minimal_data(), "networking/ipv4/node_address_cidr"))
        self.assertIsNone(cfg.networking.ipv4.node_address_cidr)

    def test_env_overrides_or_replaces_the_file(self) -> None:
        env = {"TUNMESH_NODE_ADDRESS": "10.10.7.9/24"}
        for data in (minimal_data(), del_key(minimal_data(), "networking/ipv4/node_address_cidr")):
            cfg = self.load(data, env=env)
            self.assertEqual(cfg.networking.ipv4.node_address_cidr, ipaddress.IPv4Interface("10.10.7.9/24"))

    def test_ipv6_env_twin(self) -> None:
        data = set_key(minimal_data(), "networking/ipv6", {"network_cidr": "fd00:1::/64"})
        cfg = self.load(data, env={"TUNMESH_NODE_ADDRESS6": "fd00:1::9/64"})
        assert cfg.networking.ipv6 is not None
        self.assertEqual(cfg.networking.ipv6.node_address_cidr, ipaddress.IPv6Interface("fd00:1::9/64"))

    def test_bad_env_value_names_the_variable(self) -> None:
        errors = self.errors_of(minimal_data(), env={"TUNMESH_NODE_ADDRESS": "10.10.7.9"})
        self.assertEqual(len(errors), 1)
        self.assertIn("(from the environment variable TUNMESH_NODE_ADDRESS)", errors[0])


class FileLoadingTests(ConfigTestMixin, SynchronousTestCase):
    def test_relative_paths_use_config_dir_not_cwd(self) -> None:
        sub = self.base / "etc"
        sub.mkdir()
        make_files(sub)
        path = sub / "config.yaml"
        path.write_text(SAMPLE_YAML)
        cfg = load_config(str(path), env={})
        self.assertEqual(cfg.control_api.ssl.cert_file_path, sub / "ssl" / "cert.pem")

    def test_load_config_env_and_rng(self) -> None:
        path = self.base / "config.yaml"
        path.write_text(SAMPLE_YAML.replace("uid: 1000", "uid: 1000\n    timing:\n      request_timeout: 1..2"))
        cfg = load_config(path, env={"TUNMESH_ADVERTISE_URL": "https://z.example"}, rng=random.Random(3))
        self.assertEqual(cfg.clustering.control_api_advertise_url, "https://z.example")
        self.assertEqual(cfg.process.timing.request_timeout, random.Random(3).uniform(1.0, 2.0))

    def test_malformed_yaml_one_line(self) -> None:
        path = self.base / "bad.yaml"
        path.write_text("tun_mesh:\n  a: [1, 2\n  b: 3\n")
        e = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(e.errors, (e,))
        self.assertRegex(str(e), rf"^{path}:\d+:\d+: invalid YAML: .+$")
        self.assertNotIn("\n", str(e))

    def test_yaml_tab_error_position(self) -> None:
        path = self.base / "tab.yaml"
        path.write_text("tun_mesh:\n\tconfig_version: 1.1\n")
        self.assertTrue(str(self.assertRaises(ConfigError, load_config, path, {})).startswith(f"{path}:2:1: "))

    def test_unsafe_tags_refused(self) -> None:
        path = self.base / "tag.yaml"
        path.write_text("tun_mesh: !!python/object/apply:os.system ['true']\n")
        self.assertIn("invalid YAML", str(self.assertRaises(ConfigError, load_config, path, {})))

    def test_missing_file(self) -> None:
        e = self.assertRaises(ConfigError, load_config, self.base / "nope.yaml", {})
        self.assertEqual(str(e), f"{self.base / 'nope.yaml'}: config file does not exist")

    def test_directory_not_a_file(self) -> None:
        e = self.assertRaises(ConfigError, load_config, self.base, {})
        self.assertEqual(str(e), f"{self.base}: not a regular file")

    def test_non_utf8_file(self) -> None:
        path = self.base / "latin.yaml"
        path.write_bytes(b"tun_mesh: \xe9\n")
        self.assertIn("not UTF-8", str(self.assertRaises(ConfigError, load_config, path, {})))

    def test_empty_file(self) -> None:
        path = self.base / "empty.yaml"
        path.write_text("")
        self.assertIn("got null", str(self.assertRaises(ConfigError, load_config, path, {})))

    def test_resolve_config_path(self) -> None:
        self.assertEqual(resolve_config_path("/a.yaml", {"TUNMESH_CONFIG_PATH": "/b.yaml"}), Path("/a.yaml"))
        self.assertEqual(resolve_config_path(None, {"TUNMESH_CONFIG_PATH": "/b.yaml"}), Path("/b.yaml"))
        self.assertEqual(resolve_config_path(None, {}), Path("/etc/tunmesh/config.yaml"))
        self.assertEqual(resolve_config_path("", {"TUNMESH_CONFIG_PATH": ""}), Path("/etc/tunmesh/config.yaml"))


class DumpTests(ConfigTestMixin, SynchronousTestCase):
    def test_dump_is_plain_yaml_and_round_trips(self) -> None:
        data = minimal_data()
        set_key(data, "networking/ipv6", {"network_cidr": "fd00:1::/64", "node_address_cidr": "fd00:1::5/64"})
        set_key(data, "clustering/limits/peer_networks", ["198.18.0.0/15"])
        set_key(data, "process/timing/auth/session_max_age", "50..60m")
        cfg = self.load(data)
        text = dump_config(cfg, redact=False)
        self.assertNotIn("!!", text)
        reloaded = load_config_data(yaml.safe_load(text), self.base, env={}, rng=random.Random(99))
        self.assertEqual(reloaded, cfg)

    def test_dump_values_are_plain(self) -> None:
        tree = yaml.safe_load(dump_config(self.load(minimal_data())))["tun_mesh"]
        self.assertEqual(tree["networking"]["ipv4"]["node_address_cidr"], "10.10.1.5/24")
        self.assertEqual(tree["control_api"]["ssl"]["key_file_path"], str(self.base / "ssl" / "key.pem"))
        self.assertEqual(tree["config_version"], "1.1")
        self.assertIsNone(tree["networking"]["ipv6"])
