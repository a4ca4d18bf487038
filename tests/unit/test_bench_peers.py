"""contrib/bench: the peer VPNs' generated configs, the sockperf parser and the report's ratios and best peer."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.trial.unittest import SynchronousTestCase

from tests.netns import bench_script

peers = bench_script("peers")
rr = bench_script("rr")
bench = bench_script("bench")

PKI = Path("/srv/pki")

#: ``sockperf pp --tcp -m 64 -t 3`` as sockperf 3.7 prints it, colour escapes included
SOCKPERF_OUTPUT = """\
sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 198.18.0.2      PORT = 11111 # TCP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=3.000 sec; Warm up time=400 msec; SentMessages=198714; ReceivedMessages=198713
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=2.550 sec; SentMessages=171644; ReceivedMessages=171644
sockperf: \x1b[2;35m====> avg-latency=7.394 (std-dev=22.880)\x1b[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Latency is 7.394 usec
sockperf: \x1b[2;35mTotal 171644 observations\x1b[0m; each percentile contains 1716.44 observations
sockperf: ---> <MAX> observation = 1142.268
sockperf: ---> percentile 99.999 = 1110.308
sockperf: ---> percentile 99.990 = 1095.892
sockperf: ---> percentile 99.900 =   17.573
sockperf: ---> percentile 99.000 =   11.427
sockperf: ---> percentile 90.000 =    7.092
sockperf: ---> percentile 75.000 =    6.938
sockperf: ---> percentile 50.000 =    6.795
sockperf: ---> percentile 25.000 =    6.662
sockperf: ---> <MIN> observation =    4.365
"""


class NebulaConfigTests(SynchronousTestCase):
    def test_the_yaml_parses_and_names_this_nodes_certificates_and_the_other_nodes_addresses(self) -> None:
        for i, j in ((1, 2), (2, 1)):
            config = yaml.safe_load(peers.nebula_config(i, PKI))
            self.assertEqual(config["pki"], {"ca": "/srv/pki/ca.crt", "cert": f"/srv/pki/node{i}.crt",
                                             "key": f"/srv/pki/node{i}.key"})
            self.assertEqual(config["static_host_map"], {f"100.64.0.{j}": [f"198.18.0.{j}:4242"]})
            self.assertEqual(config["listen"], {"host": f"198.18.0.{i}", "port": 4242})
            self.assertEqual(config["tun"]["dev"], f"tmt-neb{i}")
            self.assertEqual(config["tun"]["mtu"], 1400)
            self.assertFalse(config["lighthouse"]["am_lighthouse"])
            self.assertEqual(config["lighthouse"]["hosts"], [])

    def test_the_firewall_lets_every_protocol_in_and_out(self) -> None:
        config = yaml.safe_load(peers.nebula_config(1, PKI))
        rule = [{"port": "any", "proto": "any", "host": "any"}]
        self.assertEqual(config["firewall"], {"outbound": rule, "inbound": rule})

    def test_a_third_node_is_refused(self) -> None:
        self.assertRaises(ValueError, peers.nebula_config, 3, PKI)


class WireGuardConfigTests(SynchronousTestCase):
    def test_the_key_pair_is_x25519_in_wg_s_base64(self) -> None:
        private, public = peers.wireguard_keypair()
        raw = base64.b64decode(private)
        self.assertEqual(len(raw), 32)
        derived = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.assertEqual(base64.b64decode(public), derived)
        self.assertNotEqual(peers.wireguard_keypair()[0], private)

    def test_the_config_has_this_nodes_key_and_the_other_node_as_its_only_peer(self) -> None:
        text = peers.wireguard_config(2, "PRIV2=", "PUB1=")
        self.assertEqual(text.splitlines(), [
            "[Interface]",
            "PrivateKey = PRIV2=",
            "ListenPort = 51820",
            "",
            "[Peer]",
            "PublicKey = PUB1=",
            "AllowedIPs = 100.64.0.1/32",
            "Endpoint = 198.18.0.1:51820",
        ])


class OpenVPNConfigTests(SynchronousTestCase):
    def options(self, i: int) -> dict[str, str]:
        lines = peers.openvpn_config(i, PKI).splitlines()
        return dict((line.split(" ", 1) + [""])[:2] for line in lines if line)

    def test_node_1_is_the_tls_server_over_udp_and_node_2_the_client(self) -> None:
        one, two = self.options(1), self.options(2)
        self.assertIn("tls-server", one)
        self.assertNotIn("tls-client", one)
        self.assertIn("tls-client", two)
        self.assertNotIn("tls-server", two)
        for opts in (one, two):
            self.assertEqual(opts["proto"], "udp")
            self.assertEqual(opts["dh"], "none")
            self.assertEqual(opts["data-ciphers"], "AES-256-GCM")
            self.assertEqual(opts["tun-mtu"], "1400")
            self.assertIn("disable-dco", opts)
            self.assertEqual(opts["ca"], "/srv/pki/ca.crt")

    def test_each_node_names_its_addresses_and_the_other_nodes(self) -> None:
        opts = self.options(2)
        self.assertEqual(opts["dev"], "tmt-ovpn2")
        self.assertEqual(opts["local"], "198.18.0.2")
        self.assertEqual(opts["remote"], "198.18.0.1 1194")
        self.assertEqual(opts["ifconfig"], "100.64.0.2 100.64.0.1")
        self.assertEqual(opts["cert"], "/srv/pki/node2.crt")
        self.assertEqual(opts["key"], "/srv/pki/node2.key")


class PeerSelectionTests(SynchronousTestCase):
    def test_all_or_nothing_named_selects_every_peer_in_order(self) -> None:
        names = ["nebula", "wireguard-go", "openvpn"]
        self.assertEqual([p.name for p in peers.select("all")], names)
        self.assertEqual([p.name for p in peers.select("")], names)

    def test_a_list_selects_those_once(self) -> None:
        self.assertEqual([p.name for p in peers.select("openvpn, nebula,openvpn")], ["openvpn", "nebula"])

    def test_an_unknown_name_is_a_clear_error(self) -> None:
        e = self.assertRaises(ValueError, peers.select, "nebula,tinc")
        self.assertIn("unknown peer tinc", str(e))
        self.assertIn("wireguard-go", str(e))

    def test_a_missing_binary_names_the_packages_to_install(self) -> None:
        class Absent(peers.PeerVPN):  # type: ignore[name-defined]
            name = "absent"
            binaries = ("tmt-no-such-binary", "sh")
            packages = ("pkg-a", "pkg-b")

            def prepare(self, workdir: Path) -> None:
                raise AssertionError("not started")

            def launch(self, *args: Any) -> Any:
                raise AssertionError("not started")

        self.assertEqual(Absent().missing(), "tmt-no-such-binary not installed (apt-get install -y pkg-a pkg-b)")

    def test_devices_are_one_per_node(self) -> None:
        self.assertEqual([peers.WireGuardGo.device(i) for i in (1, 2)], ["tmt-wg1", "tmt-wg2"])
        self.assertRaises(ValueError, peers.WireGuardGo.device, 0)


class SockperfParserTests(SynchronousTestCase):
    def test_transactions_per_second_and_round_trips_from_the_valid_duration(self) -> None:
        r = rr.parse_pingpong(SOCKPERF_OUTPUT)
        self.assertAlmostEqual(r["transactions_per_s"], 171644 / 2.55)
        self.assertEqual(r["transactions"], 171644)
        # sockperf's latencies are half round trips
        self.assertAlmostEqual(r["rtt_mean_us"], 14.788)
        self.assertAlmostEqual(r["rtt_p50_us"], 13.59)
        self.assertAlmostEqual(r["rtt_p99_us"], 22.854)
        self.assertAlmostEqual(r["rtt_max_us"], 2284.536)

    def test_output_without_a_result_is_an_error_quoting_its_end(self) -> None:
        e = self.assertRaises(rr.SockperfOutputError, rr.parse_pingpong,
                              "sockperf: ERROR: Failed to connect (errno=111)\n")
        self.assertIn("Failed to connect", str(e))
        self.assertRaises(rr.SockperfOutputError, rr.parse_pingpong, "")

    def test_no_answers_is_an_error(self) -> None:
        text = SOCKPERF_OUTPUT.replace("ReceivedMessages=171644", "ReceivedMessages=0")
        self.assertRaises(rr.SockperfOutputError, rr.parse_pingpong, text)

    def test_the_client_sends_64_byte_requests_over_tcp(self) -> None:
        self.assertEqual(rr.client_argv("100.64.0.2", 5),
                         ["sockperf", "pp", "--tcp", "-i", "100.64.0.2", "-p", "11111", "-t", "5", "-m", "64"])


def _result(tcp1: float, ping: float, tps: float | None) -> dict[str, Any]:
    r: dict[str, Any] = {"tcp1_bps": tcp1, "tcp4_bps": tcp1, "udp_rx_bps": tcp1 / 10, "tcp1_cpu_pct": 100.0,
                         "ping": {"avg_ms": ping, "p50_ms": ping, "max_ms": ping}}
    r["rr"] = {"transactions_per_s": tps, "rtt_mean_us": 1e6 / tps} if tps else {"error": "sockperf failed"}
    return r


class ReportTests(SynchronousTestCase):
    results = {
        "raw": {"result": _result(30e9, 0.05, 50000)},
        "nebula": {"result": _result(1.0e9, 0.4, 10000)},
        "wireguard-go": {"error": "wireguard-go not installed (apt-get install -y wireguard-go wireguard-tools)"},
        "openvpn": {"result": _result(0.8e9, 0.3, 12000)},
        "tunmesh": {"result": {**_result(3.0e9, 0.9, 4000), "join_s": 2.5, "idle_cpu_pct": [0.25, 0.5],
                               "idle_seconds": 30}},
    }

    def test_the_best_peer_for_each_figure_and_tunmeshs_ratio_to_it(self) -> None:
        text = bench.report(self.results, ["nebula", "wireguard-go", "openvpn"])
        self.assertIn("Best peer, ping avg: openvpn 0.300 ms; tunmesh 0.900 ms = 3.00x", text)
        self.assertIn("Best peer, TCP 1 stream: nebula 1.00 Gbit/s; tunmesh 3.00 Gbit/s = 3.00x", text)
        self.assertIn("Best peer, request/response: openvpn 12000/s; tunmesh 4000/s = 0.33x", text)

    def test_ratios_to_raw_include_the_request_response_rate(self) -> None:
        text = bench.report(self.results, ["nebula", "wireguard-go", "openvpn"])
        self.assertIn("  tunmesh: 0.100 / 0.100 / 0.100 / 18.0x / 0.080", text)

    def test_a_missing_peer_gets_a_row_with_the_install_hint(self) -> None:
        text = bench.report(self.results, ["nebula", "wireguard-go", "openvpn"])
        self.assertIn("| wireguard-go | failed: wireguard-go not installed (apt-get install -y wireguard-go "
                      "wireguard-tools) |", text)

    def test_the_tunmesh_section_has_the_join_time_and_idle_cpu_per_node(self) -> None:
        text = bench.report(self.results, [])
        self.assertIn("first ping through the overlay answered 2.50 s after the start", text)
        self.assertIn("(30 s at rest, % of one core): node 1 0.25 %, node 2 0.50 %", text)
        self.assertNotIn("Best peer", text)

    def test_a_datapath_without_a_request_response_figure_shows_a_dash(self) -> None:
        results = {"raw": {"result": _result(30e9, 0.05, 50000)}, "tunmesh": {"result": _result(3e9, 0.9, None)}}
        text = bench.report(results)
        self.assertIn("| tunmesh | 3.00 | 3.00 | 300 | 0.900 / 0.900 / 0.900 | – | 100 % |", text)
        self.assertIn("  tunmesh: 0.100 / 0.100 / 0.100 / 18.0x / –", text)

    def test_the_request_response_cell_has_the_rate_and_the_mean_and_median_round_trip(self) -> None:
        r = _result(1e9, 0.4, 10000)
        r["rr"]["rtt_p50_us"] = 80.4
        row = bench.fmt_row("nebula", r, None)
        self.assertEqual(row, "| nebula | 1.00 | 1.00 | 100 | 0.400 / 0.400 / 0.400 | 10000 (100 / 80 µs) | 100 % |")
