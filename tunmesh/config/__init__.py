"""tunmesh configuration: schema (declared once in ``tree``), loader, linter, example and docs generators."""

from tunmesh.config.errors import ConfigError, ConfigErrors, ConfigWarning
from tunmesh.config.loader import (
    CONFIG_PATH_ENV,
    DEFAULT_CONFIG_PATH,
    dump_config,
    load_config,
    load_config_data,
    resolve_config_path,
)
from tunmesh.config.tree import ADVERTISE_URL_ENV, SECRET_ENV, TunMeshConfig

__all__ = [
    "ADVERTISE_URL_ENV",
    "CONFIG_PATH_ENV",
    "DEFAULT_CONFIG_PATH",
    "SECRET_ENV",
    "ConfigError",
    "ConfigErrors",
    "ConfigWarning",
    "TunMeshConfig",
    "dump_config",
    "load_config",
    "load_config_data",
    "resolve_config_path",
]
