"""``tunmesh.tap``: what ``twistd tunmesh`` and ``tunmesh run`` share (no reactor is run here)."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from twisted.application.service import IServiceMaker
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_config_helpers import minimal_data
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

