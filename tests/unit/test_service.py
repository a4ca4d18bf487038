"""Pieces of the node composition that run without root: the bootstrap-list reloader."""

from __future__ import annotations

from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_config_helpers import make_files, minimal_data, set_key
from tunmesh.config import ConfigError, load_config
from tunmesh.service import reloader


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
        self.assertRaises(ConfigError, reload)  # type: ignore[arg-type]

    def test_off_unless_configured(self) -> None:
        path = self.write(self.base, ["https://198.18.0.1:4567/"], reload=False)
        self.assertIsNone(reloader(load_config(path, env={}), path))
