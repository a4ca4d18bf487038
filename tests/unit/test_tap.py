"""``tunmesh.tap``: what ``twistd tunmesh`` and ``tunmesh run`` share (no reactor is run here)."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from twisted.application import internet
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import minimal_data
from tunmesh import logsetup, service, tap
from tunmesh.api.server import ConnectionLimitFactory
from tunmesh.cli import main
from tunmesh.config import load_config
from tunmesh.dataplane.datagram import DatagramService
from tunmesh.privileges import PrivilegeDropService
from tunmesh.reload import ReloadOnSignal
from tunmesh.testing import FakeTun
from tunmesh.tls.certs import write_self_signed
from tunmesh.tls.dispatch import ALPNDispatchFactory


class PluginTests(SynchronousTestCase):
    def test_plugin_only_names_the_tap_module(self) -> None:
        from twisted.plugins import tunmesh_plugin

        maker = tunmesh_plugin.TunMesh
        self.assertTrue(IServiceMaker.providedBy(maker))
        self.assertEqual(maker.tapname, "tunmesh")
        self.assertIs(maker.options, tap.Options)


class RunOptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp()).resolve()
        (base / "ssl").mkdir(parents=True)
        write_self_signed(base / "ssl" / "cert.pem", base / "ssl" / "key.pem")
        self.config = base / "config.yaml"
        self.config.write_text(yaml.safe_dump(minimal_data()))

    def test_run_is_twistd_in_the_foreground_with_this_node_only(self) -> None:
        options = tap._server_options()
        options.parseOptions(tap.twistd_argv(str(self.config)))
        self.assertEqual(options.subCommand, "tunmesh")
        self.assertEqual(list(options.loadedPlugins), ["tunmesh"])
        self.assertIsInstance(options.subOptions, tap.Options)
        self.assertEqual(options.subOptions["config_path"], self.config)
        self.assertTrue(options["nodaemon"])
        self.assertEqual(options["pidfile"], "")
        # the node's level filter is twistd's logger
        self.assertIs(options["logger"], logsetup.twistd_observer)

    def test_bad_config_is_a_usage_error_with_one_line_per_problem(self) -> None:
        # twistd's way: a bad option (here the config behind --config) is a UsageError, which twistd
        # prints after its usage text; each problem on a line of its own, naming the key path.
        self.config.write_text("tun_mesh: {config_version: 1.1}\n")
        options = tap._server_options()
        with self.assertRaises(usage.UsageError) as raised:
            options.parseOptions(tap.twistd_argv(str(self.config)))
        self.assertIsInstance(raised.exception, service.ConfigRefused)
        lines = str(raised.exception).splitlines()
        self.assertEqual(lines[0], "the config was refused:")
        self.assertTrue(lines[1:], lines)
        self.assertTrue(all(line.startswith("tunmesh: config error: tun_mesh/") for line in lines[1:]), lines)

    def test_tunmesh_run_prints_only_the_problem_lines_and_exits_1(self) -> None:
        self.config.write_text("tun_mesh: {config_version: 1.1}\n")
        err = io.StringIO()
        self.patch(tap.sys, "stderr", err)
        with self.assertRaises(SystemExit) as raised:
            tap.run(str(self.config))
        self.assertEqual(raised.exception.code, 1)
        lines = err.getvalue().splitlines()
        self.assertTrue(lines, err.getvalue())
        self.assertTrue(all(line.startswith("tunmesh: config error: tun_mesh/") for line in lines), lines)

    def test_cli_run_help(self) -> None:
        out = io.StringIO()
        self.assertEqual(main(["run", "--help"], stdout=out, stderr=io.StringIO()), 0)
        self.assertIn("--config FILE", out.getvalue())
        self.assertIn("SIGHUP", out.getvalue())


class MakeServiceTests(SynchronousTestCase):
    """``makeService`` only builds: a memory reactor and a fake TUN, no root, nothing started."""

    def build(self) -> tuple[Path, MemoryReactorClock, list[FakeTun], MultiService]:
        """The node of :func:`minimal_data` with a self-signed certificate, on a ``MemoryReactorClock``
        with a :class:`FakeTun` (the config path, the reactor, the opened TUNs and the service tree)."""
        base = Path(self.mktemp()).resolve()
        (base / "ssl").mkdir(parents=True)
        write_self_signed(base / "ssl" / "cert.pem", base / "ssl" / "key.pem")
        path = base / "config.yaml"
        path.write_text(yaml.safe_dump(minimal_data()))
        tuns: list[FakeTun] = []

        def open_tun(networking: object) -> FakeTun:
            tuns.append(FakeTun())
            return tuns[-1]

        reactor = MemoryReactorClock()
        top = service.makeService(load_config(path), reactor, open_tun, config_path=path)

        def close_all() -> None:
            for t in tuns:
                t.close()

        self.addCleanup(close_all)
        return path, reactor, tuns, top

    def test_node_is_a_tree_of_named_services_in_start_order(self) -> None:
        _path, reactor, tuns, top = self.build()
        self.assertEqual(
            [s.name for s in top],
            ["clockwatch", "tun", "cert_expiry", "api", "datagrams", "mesh", "dataplane", "reload", "admin",
             "privileges"],
        )
        self.assertEqual(len(tuns), 1)  # opened while building, as root would
        self.assertIs(top.getServiceNamed("tun").device, tuns[0])
        self.assertIsInstance(top.getServiceNamed("privileges"), PrivilegeDropService)
        self.assertEqual(reactor.getDelayedCalls(), [])  # nothing scheduled: it only builds
        self.assertFalse(top.running)

    def test_api_port_listens_on_the_configured_address_once_bound(self) -> None:
        _path, reactor, _tuns, top = self.build()
        port = top.getServiceNamed("api")
        self.assertIsInstance(port, internet.TCPServer)
        self.assertEqual(reactor.tcpServers, [])  # bound in privilegedStartService, not before
        port.privilegedStartService()
        self.addCleanup(port.stopService)
        [(number, factory, _backlog, interface)] = reactor.tcpServers
        self.assertEqual((number, interface), (4567, "0.0.0.0"))
        # caps(TLS(ALPN dispatch(site, packet links)))
        assert isinstance(factory, ConnectionLimitFactory)
        tls = factory.wrappedFactory
        assert isinstance(tls, TLSMemoryBIOFactory)
        self.assertIsInstance(tls.wrappedFactory, ALPNDispatchFactory)

    def test_datagram_port_is_the_same_port_number_over_udp_on_the_same_address(self) -> None:
        _path, _reactor, _tuns, top = self.build()
        udp = top.getServiceNamed("datagrams")
        self.assertIsInstance(udp, DatagramService)
        self.assertEqual((udp.port_number, udp.interface), (4567, "0.0.0.0"))
        self.assertIs(udp.endpoint, top.getServiceNamed("dataplane").datagrams)
        self.assertFalse(udp.endpoint.active)  # bound in privilegedStartService, not before

    def test_node_has_the_sighup_reload_wired_to_its_tls_and_membership(self) -> None:
        path, _reactor, _tuns, top = self.build()
        reload = top.getServiceNamed("reload")
        self.assertIsInstance(reload, ReloadOnSignal)
        self.assertEqual(reload.reloader.config_path, path)
        self.assertEqual(reload.reloader.reload().changed, ())
        data = minimal_data()
        data["tun_mesh"]["clustering"]["bootstrap_groups"]["default"]["bootstrap_node_urls"] = ["https://n9.test:4567"]
        data["tun_mesh"]["logging"] = {"level": "debug"}
        path.write_text(yaml.safe_dump(data))
        self.addCleanup(logsetup.set_level, logsetup.current_level())
        report = reload.reloader.reload()
        self.assertEqual(set(report.changed), {"tun_mesh/clustering/bootstrap_groups", "tun_mesh/logging/level"})
        membership = top.getServiceNamed("mesh").membership
        self.assertEqual([g.spec.urls for g in membership.bootstrapper.groups], [("https://n9.test:4567",)])
        self.assertEqual(logsetup.current_level(), "debug")
        names = [s.name for s in top]
        self.assertLess(names.index("reload"), len(names) - 1)  # before the privilege drop (the last child)
