"""Reloading what can change while a node runs (SIGHUP), without dropping a link.

:class:`NodeReloader` re-reads the config file and applies, each on its own:

- ``control_api/ssl`` certificate and key: the port's TLS for connections accepted from now on;
- the trust anchors (``ca_file_path``, or the node's own certificate) and ``verify_hostname``: the
  verification of connections this node opens from now on (control requests and packet links);
- ``clustering/bootstrap_groups``: used from the next bootstrap pass;
- ``clustering/auth``: the accepted cluster secrets (``secret``, ``secret_file``, ``secrets``, files
  re-read) and the one this node signs with, for tokens from now on; outbound sessions salted with a
  secret no longer accepted are rotated at once (docs/security.md, "Rotating the cluster secret");
- ``logging/level``.

Established connections and links keep what they negotiated. A part that cannot be loaded (a garbage PEM,
a key that does not match, an unreadable file) is refused with one line naming its key and the node keeps
the running value; the other parts are still applied. A file that no longer loads as a whole is refused
entirely. Keys that only take effect at start are named in one line. Files are read as ``process.uid``
(the node has dropped root by then), so they must be readable by it.

:class:`ReloadOnSignal` calls :meth:`NodeReloader.reload` on SIGHUP from the reactor thread; a later
``tunmesh reload`` command can call the same method.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml
from attrs import frozen
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from tunmesh.auth.cluster import ClusterKeyring
from tunmesh.config import ConfigError, load_config
from tunmesh.config.errors import ConfigWarning
from tunmesh.config.tree import TunMeshConfig
from tunmesh.mesh.settings import BootstrapGroupSpec, MeshSettings
from tunmesh.tls.certs import load_certificates
from tunmesh.tls.contexts import (
    CA_FILE_KEY,
    CERT_FILE_KEY,
    KEY_FILE_KEY,
    MeshTLSPolicy,
    ReloadableServerTLS,
    TLSConfigError,
    load_trust_bundle,
)

ROOT = "tun_mesh"
SSL_KEY = f"{ROOT}/control_api/ssl"
GROUPS_KEY = f"{ROOT}/clustering/bootstrap_groups"
AUTH_KEY = f"{ROOT}/clustering/auth"
LEVEL_KEY = f"{ROOT}/logging/level"
#: Keys (and everything below them) a reload applies; any other change needs a restart.
RELOADABLE = (SSL_KEY, GROUPS_KEY, AUTH_KEY, LEVEL_KEY)


class BootstrapGroupsTarget(Protocol):
    """What the reloader needs of ``Membership``."""

    def set_bootstrap_groups(self, specs: Sequence[BootstrapGroupSpec]) -> bool: ...


class ClusterSecretsTarget(Protocol):
    """What the reloader needs of ``Membership`` for the cluster secrets."""

    def set_cluster_keyring(self, keyring: ClusterKeyring) -> None: ...


class CertificatesTarget(Protocol):
    """What the reloader tells ``tunmesh.tls.expiry.CertExpiryWatch`` after a change."""

    def set_certificates(self, node: Any, trust: Sequence[Any]) -> None: ...


TLSCheck = Callable[[TunMeshConfig], Sequence[ConfigError | ConfigWarning]]


def preflight_tls(cfg: TunMeshConfig) -> Sequence[ConfigError | ConfigWarning]:
    """The start-up TLS checks of ``tunmesh.preflight`` (key strength, key/certificate match, validity,
    CA-bundle policy), so a reload refuses what a start would refuse. The files are read as the running
    uid; the preflight's check of what ``process.uid`` can read is moot here (a read failure is the answer)."""
    from tunmesh.preflight import check_files

    report = check_files(cfg, None, read_check=lambda uid, gid, paths: [])
    return (*report.errors, *report.warnings)


@frozen
class ReloadReport:
    """What one reload did: config key paths ``changed`` (applied), ``refused`` (kept the running value),
    and changed in the file but only applied at the next start (``restart_needed``)."""

    changed: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()


def _file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def _trust_digest(certs: Iterable[Any]) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    h = hashlib.sha256()
    for cert in certs:
        h.update(cert.public_bytes(Encoding.DER))
    return h.hexdigest()


def _leaves(data: Any, prefix: str) -> dict[str, Any]:
    """``{"a/b/c": value}`` for every leaf of a YAML mapping tree."""
    if not isinstance(data, Mapping):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_leaves(value, f"{prefix}/{key}"))
    return out


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _is_reloadable(key: str, reloadable: Sequence[str] = RELOADABLE) -> bool:
    return any(key == k or key.startswith(k + "/") for k in reloadable)


def _keyring_of(cfg: TunMeshConfig) -> ClusterKeyring:
    auth = cfg.clustering.auth
    return ClusterKeyring(auth.accepted_secrets, auth.signing_id)


def _keyring_state(keyring: ClusterKeyring) -> tuple[str, tuple[tuple[str, str], ...]]:
    return keyring.signing_id, tuple((i, keyring.fingerprint(i)) for i in keyring.ids)


def _trust_of(cfg: TunMeshConfig) -> tuple[Path, str]:
    ssl = cfg.control_api.ssl
    if ssl.ca_file_path is not None:
        return ssl.ca_file_path, CA_FILE_KEY
    return ssl.cert_file_path, CERT_FILE_KEY


class NodeReloader:
    """Applies a re-read config file to a running node (see the module docstring).

    :param config_path: the file the node was started from (``None``: nothing to reload).
    :param running: the config the node was started with.
    :param server_tls: the port's TLS, swapped for new connections.
    :param make_server_tls: ``(cert_path, key_path) -> creator``; raises ``TLSConfigError``
        (``tunmesh.tls.contexts.server_context`` with the port's ALPN list).
    :param client_policies: every client TLS policy of the node (control requests, packet links).
    :param groups: receives the new bootstrap groups.
    :param set_log_level: applies a ``logging.level`` value.
    :param certificates: told the node certificate and trust anchors in use after a change (the expiry
        watch), or ``None``.
    :param secrets: told the accepted cluster secrets after a change (``Membership``), or ``None``: then
        a changed secret is named as needing a restart.
    :param load: reads and validates the file (``tunmesh.config.load_config``).
    :param check_tls: the start-up checks of the TLS files (:func:`preflight_tls`): errors refuse the part
        whose key they name, warnings are logged.
    """

    log = Logger()

    def __init__(
        self,
        config_path: Path | None,
        running: TunMeshConfig,
        *,
        server_tls: ReloadableServerTLS,
        make_server_tls: Callable[[Path, Path], Any],
        client_policies: Sequence[MeshTLSPolicy],
        groups: BootstrapGroupsTarget,
        set_log_level: Callable[[str], None],
        certificates: CertificatesTarget | None = None,
        secrets: ClusterSecretsTarget | None = None,
        load: Callable[[Path], TunMeshConfig] = load_config,
        check_tls: TLSCheck = preflight_tls,
    ) -> None:
        self.config_path = config_path
        self._server_tls = server_tls
        self._make_server_tls = make_server_tls
        self._policies = tuple(client_policies)
        self._groups = groups
        self._set_log_level = set_log_level
        self._load = load
        self._certificates = certificates
        self._check_tls = check_tls
        self._tls_problems: dict[str, str] = {}
        ssl = running.control_api.ssl
        self._cert_files = (ssl.cert_file_path, ssl.key_file_path)
        try:
            self._cert_digest: str | None = _file_digest(*self._cert_files)
        except OSError:
            self._cert_digest = None
        self._trust_digest = _trust_digest(self._policies[0].trust) if self._policies else ""
        self._verify_hostname = ssl.verify_hostname
        self._group_specs = MeshSettings.from_config(running).bootstrap_groups
        self._level = running.logging.level
        self._secrets = secrets
        self._reloadable = RELOADABLE if secrets is not None else tuple(k for k in RELOADABLE if k != AUTH_KEY)
        self._keyring = _keyring_state(_keyring_of(running))
        # The file as the node started from it: keys changed since then that a reload cannot apply
        # are named on every reload until the restart (compared as written, so a random timing range
        # such as ``50..60m`` is not a change).
        self._started_leaves = _leaves(_read_yaml(config_path), "") if config_path is not None else {}

    def reload(self) -> ReloadReport:
        """Re-read the config file and apply what can change at run time; never raises for a bad file."""
        if self.config_path is None:
            self.log.warn("reload: the node was not started from a config file; nothing to reload")
            return ReloadReport()
        self.log.info("reload: re-reading {path}", path=str(self.config_path))
        try:
            cfg = self._load(self.config_path)
        except ConfigError as e:
            for problem in e.errors:
                self.log.error("reload refused, keeping the running configuration: {problem}", problem=str(problem))
            return ReloadReport(refused=(ROOT,))
        self._tls_problems = {}
        for tls_problem in self._check_tls(cfg):
            if isinstance(tls_problem, ConfigWarning):
                self.log.warn("reload: {key}: {detail}", key=tls_problem.path, detail=tls_problem.message)
            else:
                self._tls_problems.setdefault(tls_problem.path, tls_problem.message)
        changed: list[str] = []
        refused: list[str] = []
        for apply in (
            self._apply_server_tls,
            self._apply_trust,
            self._apply_groups,
            self._apply_secrets,
            self._apply_level,
        ):
            key, ok = apply(cfg)
            target = changed if ok else refused
            if key is not None and key not in target:  # the certificate may also be the trust anchor
                target.append(key)
        if self._certificates is not None and ({CERT_FILE_KEY, CA_FILE_KEY} & set(changed)):
            try:
                leaf = load_certificates(self._cert_files[0])[0]
                self._certificates.set_certificates(leaf, self._policies[0].trust if self._policies else ())
            except Exception:
                self.log.failure("reload: updating the certificate expiry watch failed")
        restart = self._restart_needed(cfg)
        if restart:
            self.log.warn(
                "reload: changed but only applied at the next start: {keys}", keys=", ".join(restart)
            )
        if not changed and not refused:
            self.log.info("reload: nothing to change")
        return ReloadReport(tuple(changed), tuple(refused), tuple(restart))

    # -- the parts -------------------------------------------------------------------------------

    def _apply_server_tls(self, cfg: TunMeshConfig) -> tuple[str | None, bool]:
        ssl = cfg.control_api.ssl
        files = (ssl.cert_file_path, ssl.key_file_path)
        key = CERT_FILE_KEY
        try:
            digest = _file_digest(*files)
            if files == self._cert_files and digest == self._cert_digest:
                return None, True
            for name in (CERT_FILE_KEY, KEY_FILE_KEY):
                if name in self._tls_problems:
                    raise TLSConfigError(name, self._tls_problems[name])
            creator = self._make_server_tls(*files)
        except (OSError, TLSConfigError) as e:
            where = e.path if isinstance(e, TLSConfigError) else key
            message = e.message if isinstance(e, TLSConfigError) else f"cannot read: {e}"
            self.log.error(
                "reload: {key}: {detail}; new connections keep the current certificate", key=where, detail=message
            )
            return where, False
        self._server_tls.replace(creator)
        self._cert_files, self._cert_digest = files, digest
        self.log.info("reload: {key}: new connections get the certificate in {path}", key=key, path=str(files[0]))
        return key, True

    def _apply_trust(self, cfg: TunMeshConfig) -> tuple[str | None, bool]:
        if not self._policies:
            return None, True
        path, name = _trust_of(cfg)
        verify = cfg.control_api.ssl.verify_hostname
        key = name
        try:
            trust = load_trust_bundle(path, name)
            digest = _trust_digest(trust)
            if digest == self._trust_digest and verify == self._verify_hostname:
                return None, True  # what runs now: not re-judged
            if name in self._tls_problems:
                raise TLSConfigError(name, self._tls_problems[name])
        except TLSConfigError as e:
            self.log.error(
                "reload: {key}: {detail}; new connections keep the current trust anchors",
                key=e.path,
                detail=e.message,
            )
            return e.path, False
        for policy in self._policies:
            policy.replace_trust(trust, verify)
        self._trust_digest, self._verify_hostname = digest, verify
        self.log.info(
            "reload: {key}: new connections verify peers against {count} certificate(s) from {path}"
            " (verify_hostname {verify})",
            key=key,
            count=len(trust),
            path=str(path),
            verify=verify,
        )
        return key, True

    def _apply_groups(self, cfg: TunMeshConfig) -> tuple[str | None, bool]:
        specs = MeshSettings.from_config(cfg).bootstrap_groups
        if specs == self._group_specs:
            return None, True
        self._groups.set_bootstrap_groups(specs)
        self._group_specs = specs
        self.log.info(
            "reload: {key}: now {groups}",
            key=GROUPS_KEY,
            groups="; ".join(f"{g.name}: {', '.join(g.urls) or '(no URLs)'}" for g in specs) or "(none)",
        )
        return GROUPS_KEY, True

    def _apply_secrets(self, cfg: TunMeshConfig) -> tuple[str | None, bool]:
        if self._secrets is None:
            return None, True
        keyring = _keyring_of(cfg)
        state = _keyring_state(keyring)
        if state == self._keyring:
            return None, True
        old_signing, old = self._keyring[0], dict(self._keyring[1])
        new = dict(state[1])
        self._secrets.set_cluster_keyring(keyring)
        self._keyring = state
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        replaced = sorted(i for i in set(new) & set(old) if new[i] != old[i])
        self.log.info(
            "reload: {key}: accepting cluster secret ids {ids}, signing with {signing}"
            " (added: {added}; removed: {removed}; changed: {replaced}; signing was {old_signing})",
            key=AUTH_KEY,
            ids=", ".join(keyring.ids),
            signing=keyring.signing_id,
            added=", ".join(added) or "none",
            removed=", ".join(removed) or "none",
            replaced=", ".join(replaced) or "none",
            old_signing=old_signing,
        )
        return AUTH_KEY, True

    def _apply_level(self, cfg: TunMeshConfig) -> tuple[str | None, bool]:
        level = cfg.logging.level
        if level == self._level:
            return None, True
        # Logged before the switch, so a change to a quieter level is still recorded.
        self.log.info("reload: {key}: {old} -> {new}", key=LEVEL_KEY, old=self._level, new=level)
        self._set_log_level(level)
        self._level = level
        return LEVEL_KEY, True

    def _restart_needed(self, cfg: TunMeshConfig) -> tuple[str, ...]:
        assert self.config_path is not None
        now = _leaves(_read_yaml(self.config_path), "")
        keys = {
            k.lstrip("/")
            for k in set(now) | set(self._started_leaves)
            if now.get(k) != self._started_leaves.get(k) and not _is_reloadable(k.lstrip("/"), self._reloadable)
        }
        if self._secrets is None and _keyring_state(_keyring_of(cfg)) != self._keyring:
            keys.add(AUTH_KEY)  # also a secret_file rewritten in place
        return tuple(sorted(keys))


class ReloadOnSignal(Service):
    """Calls ``reload`` when the process gets ``signum`` (SIGHUP), from the reactor thread.

    The handler is installed in ``startService`` and the previous one restored in ``stopService``;
    twistd and ``tunmesh run`` both start it, so SIGHUP never stops the node.
    """

    name: str | None = "reload"  # type: ignore[assignment]
    log = Logger()

    def __init__(
        self,
        reloader: NodeReloader,
        reactor: IReactorFromThreads,
        signum: int = signal.SIGHUP,
        install: Callable[[int, Any], Any] = signal.signal,
    ) -> None:
        self.reloader = reloader
        self._reactor = reactor
        self._signum = signum
        self._install = install
        self._previous: Any = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self._previous = self._install(self._signum, self._received)

    def stopService(self) -> Any:  # noqa: N802
        if self._previous is not None:
            self._install(self._signum, self._previous)
            self._previous = None
        return super().stopService()

    def _received(self, signum: int, frame: Any) -> None:
        # A signal handler runs between two bytecodes of whatever the main thread was doing:
        # hand the work to the reactor loop, as Twisted's own handlers do.
        self._reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        self.log.info("received {signal}, reloading the configuration", signal=signal.Signals(self._signum).name)
        try:
            self.reloader.reload()
        except Exception:
            self.log.failure("reload failed; the node keeps running with its current configuration")


__all__ = ["NodeReloader", "ReloadOnSignal", "ReloadReport", "RELOADABLE", "preflight_tls"]
