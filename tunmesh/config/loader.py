"""Reading a config file into a frozen ``TunMeshConfig``, and writing the resolved tree back out.

Problems are collected rather than raised at the first one, so one ``check-config`` run shows them all.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from twisted.logger import Logger

from tunmesh.config.errors import ConfigError, ConfigWarning, raise_collected
from tunmesh.config.lint import lint
from tunmesh.config.schema import (
    INVALID,
    LoadContext,
    Uniform,
    dump_group,
    from_env,
    load_group,
    suggest,
    yaml_type_name,
)
from tunmesh.config.tree import ROOT_KEY, TunMeshConfig

CONFIG_PATH_ENV = "TUNMESH_CONFIG_PATH"
DEFAULT_CONFIG_PATH = Path("/etc/tunmesh/config.yaml")
#: Config files are small; refusing huge ones keeps a bad path (a device, a log) from eating memory.
MAX_CONFIG_BYTES = 1 << 20

log = Logger(namespace="tunmesh.config")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a scalar", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML safely; a syntax error becomes one ConfigError naming the file, line and column.

    The message carries the parser's problem description only, never the text around it (it may be a secret).
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = e.problem or e.context or "malformed YAML"
        raise ConfigError("", f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError("", f"{source}: invalid YAML: {type(e).__name__}") from None


def read_config_text(path: Path) -> str:
    """The config file's text, with one clear error for a missing, odd or unreadable file."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("", f"{path}: not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError("", f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{path}: config file does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path}: config file is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError("", f"{path}: cannot read config file: {e.strerror}") from None


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] = os.environ,
    rng: Uniform = random,
    warnings: list[ConfigWarning] | None = None,
) -> TunMeshConfig:
    """Read, validate and lint a config file. Raises ConfigError (or ConfigErrors for several problems).

    Problems that do not stop the node are appended to ``warnings`` when it is given, else logged.
    """
    config_path = Path(path)
    data = parse_yaml(read_config_text(config_path), str(config_path))
    return load_config_data(
        data, config_path.absolute().parent, env=env, rng=rng, source=str(config_path), warnings=warnings
    )


def load_config_data(
    data: Any,
    base_dir: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    rng: Uniform | None = None,
    source: str | None = None,
    warnings: list[ConfigWarning] | None = None,
) -> TunMeshConfig:
    """Validate an already parsed YAML document (the mapping holding ``tun_mesh``) and lint the result.

    ``env`` defaults to no environment at all, so tests stay independent of the caller's environment;
    ``rng`` resolves timing ranges (default: a fresh ``random.Random``). Top-level keys other than
    ``tun_mesh`` are ignored with a warning: appended to ``warnings`` when given, else logged.
    A cross-key problem with a value taken from the environment names the variable.
    """
    ctx = LoadContext(
        base_dir=Path(base_dir).absolute(),
        env=env if env is not None else {},
        rng=rng if rng is not None else random.Random(),
    )
    where = f"{source}: " if source else ""
    if not isinstance(data, Mapping):
        raise ConfigError(
            "", f"{where}the config must be a mapping with a top-level {ROOT_KEY!r} key, got {yaml_type_name(data)}"
        )
    ignored = sorted(str(k) for k in data if k != ROOT_KEY)
    for key in ignored:
        warning = ConfigWarning(key, f"unknown top-level key, ignored: every setting lives under {ROOT_KEY}")
        if warnings is not None:
            warnings.append(warning)
        else:
            log.warn("config warning: {path}: {message}", path=warning.path, message=warning.message)
    if ROOT_KEY not in data:
        close = suggest(ROOT_KEY, ignored)
        hint = f" (found {close!r}: did you mean {ROOT_KEY}?)" if close else ""
        raise ConfigError(ROOT_KEY, f"{where}missing required top-level key{hint}")
    cfg = load_group(TunMeshConfig, data[ROOT_KEY], ROOT_KEY, ctx)
    if cfg is INVALID or ctx.errors:
        raise_collected(ctx.errors)
    raise_collected(_name_env(problem, ctx.env_sources) for problem in lint(cfg))
    return cfg


def _name_env(problem: ConfigError, env_sources: Mapping[str, str]) -> ConfigError:
    variable = env_sources.get(problem.path)
    return ConfigError(problem.path, f"{problem.message} {from_env(variable)}") if variable else problem


def dump_config(cfg: TunMeshConfig, redact: bool = True) -> str:
    """The resolved tree (defaults filled, ranges resolved) as plain portable YAML; secrets redacted."""
    text: str = yaml.safe_dump({ROOT_KEY: dump_group(cfg, redact)}, sort_keys=False, default_flow_style=False)
    return text


def resolve_config_path(cli_value: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """Where the config is: the command line value, else $TUNMESH_CONFIG_PATH, else /etc/tunmesh/config.yaml."""
    if cli_value:
        return Path(cli_value)
    from_env = env.get(CONFIG_PATH_ENV)
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_PATH
