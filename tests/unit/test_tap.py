"""``tunmesh.tap``: what ``twistd tunmesh`` and ``tunmesh run`` share (no reactor is run here)."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from twisted.application.service import IServiceMaker
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import minimal_data
from tunmesh import logsetup, service, tap
from tunmesh.cli import main
from tunmesh.tls.certs import write_self_signed


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

    def test_bad_config_exits_1_with_one_line_per_problem(self) -> None:
        self.config.write_text("tun_mesh: {config_version: 1.1}\n")
        options = tap._server_options()
        err = io.StringIO()
        self.patch(service.sys, "stderr", err)
        with self.assertRaises(SystemExit) as raised:
            options.parseOptions(tap.twistd_argv(str(self.config)))
        self.assertEqual(raised.exception.code, 1)
        self.assertIn("tunmesh: config error: tun_mesh/", err.getvalue())

    def test_cli_run_help(self) -> None:
        out = io.StringIO()
        self.assertEqual(main(["run", "--help"], stdout=out, stderr=io.StringIO()), 0)
        self.assertIn("--config FILE", out.getvalue())
        self.assertIn("SIGHUP", out.getvalue())



class MakeServiceTests(SynchronousTestCase):
    """``makeService`` only builds: a memory reactor and a fake TUN, no root, nothing started."""

    def test_node_has_the_sighup_reload_wired_to_its_tls_and_membership(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from tunmesh.config import load_config
        from tunmesh.reload import ReloadOnSignal
        from tunmesh.testing import FakeTun

        base = Path(self.mktemp()).resolve()
        (base / "ssl").mkdir(parents=True)
        write_self_signed(base / "ssl" / "cert.pem", base / "ssl" / "key.pem")
        path = base / "config.yaml"
        path.write_text(yaml.safe_dump(minimal_data()))
        tuns: list[FakeTun] = []

        def open_tun(networking: object) -> FakeTun:
            tuns.append(FakeTun())
            return tuns[-1]

        top = service.makeService(load_config(path), MemoryReactorClock(), open_tun, config_path=path)

        def close_all() -> None:
            for t in tuns:
                t.close()

        self.addCleanup(close_all)
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
        self.assertEqual([g.spec.urls for g in membership.groups], [("https://n9.test:4567",)])
        self.assertEqual(logsetup.current_level(), "debug")
        names = [s.name for s in top]
        self.assertLess(names.index("reload"), len(names) - 1)  # before the privilege drop (the last child)
