"""Shared fixtures for the config tests: a minimal valid config in the original's format, with real files."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

from tunmesh.config import ConfigError, load_config_data
from tunmesh.config.tree import TunMeshConfig
from tunmesh.tls.certs import write_self_signed

SECRET = "Qx7vR2mN9pL4kT8wZ3yB6cF1hJ5dG0sAe"

# Like etc/test_config/config.1.yaml of the original (upstream-behaviour.md 1.4 "Minimal valid config").
SAMPLE_YAML = """\
---
tun_mesh:
  config_version: 1.1
  clustering:
    control_api_advertise_url: https://tunmesh1.local:4567
    bootstrap_groups:
      default:
        bootstrap_node_urls:
          - https://tunmesh2.local:4567
          - https://tunmesh3.local:4567
    auth:
      secret: SECRET_PLACEHOLDER
  control_api:
    ssl:
      cert_file_path: ssl/cert.pem
      key_file_path: ssl/key.pem
  logging:
    level: debug
  monitoring:
    method: prometheus
    prometheus:
      base_labels:
        env_name: local_test
  networking:
    ipv4:
      network_cidr: 192.168.129.0/24
      node_address_cidr: 192.168.129.10/26
  process:
    uid: 1000
""".replace("SECRET_PLACEHOLDER", SECRET)


def make_files(base: Path) -> None:
    """The cert and key files the sample refers to: a real pair, since ``check-config`` parses them."""
    (base / "ssl").mkdir(exist_ok=True)
    write_self_signed(base / "ssl" / "cert.pem", base / "ssl" / "key.pem", hostnames=("node1.example",), days=365)


def minimal_data() -> dict[str, Any]:
    """A fresh minimal valid document (paths relative to a base dir prepared by ``make_files``)."""
    return copy.deepcopy(
        {
            "tun_mesh": {
                "config_version": 1.1,
                "clustering": {
                    "control_api_advertise_url": "https://node1.example:4567",
                    "bootstrap_groups": {"default": {"bootstrap_node_urls": ["https://node2.example:4567"]}},
                    "auth": {"secret": SECRET},
                },
                "control_api": {"ssl": {"cert_file_path": "ssl/cert.pem", "key_file_path": "ssl/key.pem"}},
                "networking": {
                    "ipv4": {"network_cidr": "10.10.0.0/16", "node_address_cidr": "10.10.1.5/24"}
                },
                "process": {"uid": 1000},
            }
        }
    )


class ConfigTestMixin:
    """Gives each test a temp dir with files, and helpers that load a modified minimal config."""

    base: Path

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).absolute()  # type: ignore[attr-defined]
        self.base.mkdir(parents=True)
        make_files(self.base)

    def load(self, data: dict[str, Any], env: dict[str, str] | None = None, seed: int = 1) -> TunMeshConfig:
        return load_config_data(data, self.base, env=env, rng=random.Random(seed))

    def errors_of(self, data: Any, env: dict[str, str] | None = None) -> list[str]:
        """The error lines a load produces (the test fails if it loads)."""
        try:
            load_config_data(data, self.base, env=env, rng=random.Random(1))
        except ConfigError as e:
            return [str(x) for x in e.errors]
        raise AssertionError("config loaded but errors were expected")  # pragma: no cover


def set_key(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set ``a/b/c`` below tun_mesh (creating groups), returning the document."""
    node = data["tun_mesh"]
    keys = path.split("/")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


def del_key(data: dict[str, Any], path: str) -> dict[str, Any]:
    node = data["tun_mesh"]
    keys = path.split("/")
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return data
