"""Preflight: everything the daemon would refuse, found before the node creates anything.

``tunmesh check-config`` and the daemon run the same checks and print the same line for the same problem
(``tunmesh: config error: <key path>: <message>``, or ``config warning``). Two phases, because the daemon
has the config in hand before it builds the node:

1. :func:`load_checked`: the file, the schema, the cross-key rules (``tunmesh.config``), and the warnings
   of loading (top-level keys outside ``tun_mesh``). twistd runs it while parsing its options.
2. :func:`check_files`: what the files named by the config must be: the certificate and key parse, the key
   is strong enough and matches the certificate (``tunmesh.tls.contexts``' policy, the one ``server_context``
   enforces), the certificate is valid now (a warning below :data:`EXPIRY_WARNING_DAYS` days), the trust
   bundle obeys the CA-bundle policy (``load_trust_bundle``: never the system store), and every file the
   node reads after the privilege drop can be read by ``process.uid``. ``tunmesh.service.makeService`` runs
   it first, before the TUN device is opened, so a refused config leaves nothing behind.

:func:`preflight` runs both: it is what ``check-config`` does. Warnings never change an exit status.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import attrs
from cryptography import x509

from tunmesh.config import ConfigError, ConfigWarning, TunMeshConfig, load_config
from tunmesh.config.tree import ROOT_KEY
from tunmesh.tls.certs import CertificateFileError, load_certificates, signed_by
from tunmesh.tls.contexts import (
    CA_FILE_KEY,
    CERT_FILE_KEY,
    KEY_FILE_KEY,
    TRUST_BUNDLE_WARN_COUNT,
    TLSConfigError,
    load_trust_bundle,
    server_context,
)
from tunmesh.uidaccess import ReadCheck, effective_gid, readable_as

PROG = "tunmesh"
#: A certificate that expires sooner than this is reported (a warning: the node still starts).
EXPIRY_WARNING_DAYS = 14

SECRET_FILE_KEY = f"{ROOT_KEY}/clustering/auth/secret_file"
RELOAD_KEY = f"{ROOT_KEY}/clustering/reload_config_on_bootstrap"

Now = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@attrs.frozen
class PreflightReport:
    """What a preflight found: the loaded config (None when it did not load), errors and warnings."""

    config: TunMeshConfig | None
    errors: tuple[ConfigError, ...] = ()
    warnings: tuple[ConfigWarning, ...] = ()

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.errors

    def lines(self) -> list[str]:
        """One line per problem, warnings first, as both ``check-config`` and the daemon print them."""
        return [warning_line(w) for w in self.warnings] + [error_line(e) for e in self.errors]


def error_line(problem: ConfigError) -> str:
    return f"{PROG}: config error: {problem}"


def warning_line(problem: ConfigWarning) -> str:
    return f"{PROG}: config warning: {problem}"


def load_checked(path: Path, env: Mapping[str, str] = os.environ) -> PreflightReport:
    """Phase 1: read, validate and lint the file; collect the warnings of loading."""
    warnings: list[ConfigWarning] = []
    try:
        cfg = load_config(path, env=env, warnings=warnings)
    except ConfigError as e:
        return PreflightReport(None, e.errors, tuple(warnings))
    return PreflightReport(cfg, (), tuple(warnings))


def check_files(
    cfg: TunMeshConfig,
    config_path: Path | None = None,
    *,
    now: Now = _utcnow,
    read_check: ReadCheck = readable_as,
) -> PreflightReport:
    """Phase 2: the TLS files, certificate validity, the CA-bundle policy, files read after the drop.

    ``config_path`` is the file the config came from (re-read after the drop when
    ``reload_config_on_bootstrap`` is set).
    """
    errors: list[ConfigError] = []
    warnings: list[ConfigWarning] = []
    for problem in _tls(cfg, now()):
        if isinstance(problem, ConfigError):
            errors.append(problem)
        else:
            warnings.append(problem)
    errors.extend(_read_after_drop(cfg, config_path, read_check))
    return PreflightReport(cfg, tuple(errors), tuple(warnings))


class PreflightFailed(Exception):
    """The config is refused; ``report.lines()`` says why, one line per problem."""

    def __init__(self, report: PreflightReport) -> None:
        super().__init__("\n".join(report.lines()))
        self.report = report


def require_files(
    cfg: TunMeshConfig,
    config_path: Path | None = None,
    *,
    now: Now = _utcnow,
    read_check: ReadCheck = readable_as,
) -> PreflightReport:
    """Phase 2 for the daemon: :func:`check_files`, raising :class:`PreflightFailed` on any error.

    Returns the report (its warnings) when the node may start.
    """
    report = check_files(cfg, config_path, now=now, read_check=read_check)
    if report.errors:
        raise PreflightFailed(report)
    return report


def preflight(
    path: Path,
    env: Mapping[str, str] = os.environ,
    *,
    now: Now = _utcnow,
    read_check: ReadCheck = readable_as,
) -> PreflightReport:
    """Both phases, as ``tunmesh check-config`` runs them (the files are checked only if the config loads)."""
    loaded = load_checked(path, env)
    if loaded.config is None:
        return loaded
    files = check_files(loaded.config, path, now=now, read_check=read_check)
    return PreflightReport(loaded.config, files.errors, loaded.warnings + files.warnings)


# ------------------------------------------------------------------------------------------------ TLS


def _tls(cfg: TunMeshConfig, now: datetime.datetime) -> Iterator[ConfigError | ConfigWarning]:
    ssl_cfg = cfg.control_api.ssl
    try:
        # The daemon's own server context: parse, key policy (RSA >= 2048, EC >= 256 bits), key/cert match.
        server_context(ssl_cfg.cert_file_path, ssl_cfg.key_file_path)
        chain = load_certificates(ssl_cfg.cert_file_path)
    except TLSConfigError as e:
        yield ConfigError(e.path, e.message)
        if ssl_cfg.ca_file_path is None:
            return  # the certificate file is also the trust anchor: one line about it is enough
    except CertificateFileError as e:  # pragma: no cover - server_context read the same file just before
        yield ConfigError(CERT_FILE_KEY, str(e))
        return
    else:
        for index, cert in enumerate(chain):
            yield from _validity(cert, index, CERT_FILE_KEY, ssl_cfg.cert_file_path, now, fatal=True)
        yield from _issuer_trusted(chain, ssl_cfg.ca_file_path, ssl_cfg.cert_file_path, now)
    yield from _trust(ssl_cfg.ca_file_path, ssl_cfg.cert_file_path, now)


def _issuer_trusted(
    chain: list[x509.Certificate], ca_path: Path | None, cert_path: Path, now: datetime.datetime
) -> Iterator[ConfigError | ConfigWarning]:
    """A warning when the node's own chain does not end at one of its trust anchors: peers that trust the
    same bundle refuse this node (a CA rollover done out of order, a CA-issued certificate without its CA).
    Only a warning: peers may trust another bundle. An unusable bundle is :func:`_trust`'s to report."""
    try:
        anchors = load_trust_bundle(ca_path or cert_path, CA_FILE_KEY if ca_path else CERT_FILE_KEY)
    except TLSConfigError:
        return
    if not any(_valid_at(anchor, now) for anchor in anchors):
        return  # :func:`_trust` refuses such a bundle
    top = chain[-1]
    if any(signed_by(top, anchor) for anchor in anchors):
        return
    issuer = top.issuer.rfc4514_string() or "no issuer name"
    if ca_path is None:
        yield ConfigWarning(
            CERT_FILE_KEY,
            f"{cert_path}: issued by {issuer}, which is not in the file: peers using this file as their trust "
            "anchor cannot verify it; set ca_file_path to the CA that issued it",
        )
    else:
        yield ConfigWarning(
            CERT_FILE_KEY,
            f"{cert_path}: issued by {issuer}, which is not in ca_file_path ({ca_path}): peers that trust the "
            "same bundle refuse this node (in a CA rollover, the new CA goes into every bundle first)",
        )


def _trust(ca_path: Path | None, cert_path: Path, now: datetime.datetime) -> Iterator[ConfigError | ConfigWarning]:
    """The trust bundle as the daemon loads it (``MeshTLSPolicy``): the CA file, else the node's certificate.

    ``load_trust_bundle`` refuses the system CA store, also as ``cert_file_path`` (say a certificate kept in
    ``/etc/ssl/certs``) when there is no CA file.
    """
    trust_path, trust_key = (ca_path, CA_FILE_KEY) if ca_path is not None else (cert_path, CERT_FILE_KEY)
    try:
        anchors = load_trust_bundle(trust_path, trust_key)
    except TLSConfigError as e:
        yield ConfigError(e.path, e.message)
        return
    if ca_path is None:
        return  # the node's own certificate: its validity is checked above
    if len(anchors) > TRUST_BUNDLE_WARN_COUNT:
        yield ConfigWarning(
            CA_FILE_KEY, f"{ca_path} holds {len(anchors)} certificates; a mesh normally needs one CA or one certificate"
        )
    if all(not _valid_at(c, now) for c in anchors):
        yield ConfigError(CA_FILE_KEY, f"{ca_path}: no certificate in it is valid now, so no peer can be verified")
        return
    for index, anchor in enumerate(anchors):
        yield from _validity(anchor, index, CA_FILE_KEY, ca_path, now)


def _valid_at(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def _validity(
    cert: x509.Certificate, index: int, key: str, path: Path, now: datetime.datetime, fatal: bool = False
) -> Iterator[ConfigError | ConfigWarning]:
    """Expired or not yet valid: an error for the node's own chain (``fatal``), else a warning (one CA of a
    bundle being rotated); expiring within :data:`EXPIRY_WARNING_DAYS` days: a warning."""
    number = f" {index + 1}" if index else ""
    which = f"{path}: certificate{number} ({_subject(cert)})"
    kind = ConfigError if fatal else ConfigWarning
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        yield kind(key, f"{which} is not valid before {_when(not_before)}")
    elif now >= not_after:
        yield kind(key, f"{which} expired on {_when(not_after)}")
    elif not_after - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        days = (not_after - now).total_seconds() / 86400
        yield ConfigWarning(key, f"{which} expires in {days:.1f} days, on {_when(not_after)}")


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "no subject"


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------------------------ files after the drop


def files_read_after_drop(cfg: TunMeshConfig, config_path: Path | None) -> list[tuple[str, Path, str]]:
    """(key path, file, why) for each file the node opens as ``process.uid``.

    Today that is the config file and the files it names when ``reload_config_on_bootstrap`` is set: the
    reload runs the whole loader, whose ``file`` options must be readable. Certificates, key and trust
    bundle are otherwise read once, as root, before the drop.
    """
    if not cfg.clustering.reload_config_on_bootstrap or config_path is None:
        return []
    why = "clustering.reload_config_on_bootstrap re-reads the config and the files it names after the privilege drop"
    ssl_cfg = cfg.control_api.ssl
    files = [
        (RELOAD_KEY, Path(config_path).absolute(), why),
        (CERT_FILE_KEY, ssl_cfg.cert_file_path, why),
        (KEY_FILE_KEY, ssl_cfg.key_file_path, why),
    ]
    if ssl_cfg.ca_file_path is not None:
        files.append((CA_FILE_KEY, ssl_cfg.ca_file_path, why))
    if cfg.clustering.auth.secret_file is not None:
        files.append((SECRET_FILE_KEY, cfg.clustering.auth.secret_file, why))
    for secret_id, entry in cfg.clustering.auth.secrets.items():
        if entry.secret_file is not None:
            files.append((f"{ROOT_KEY}/clustering/auth/secrets/{secret_id}/secret_file", entry.secret_file, why))
    return files


def _read_after_drop(cfg: TunMeshConfig, config_path: Path | None, read_check: ReadCheck) -> Iterator[ConfigError]:
    files = files_read_after_drop(cfg, config_path)
    if not files:
        return
    uid = cfg.process.uid
    gid = effective_gid(uid, cfg.process.gid)
    answers = read_check(uid, gid, [path for _, path, _ in files])
    for (key, path, why), answer in zip(files, answers, strict=True):
        if answer.problem is not None:
            yield ConfigError(
                key, f"{path} is not readable by process.uid {uid} (gid {gid}): {answer.problem}; {why}"
            )


__all__ = [
    "EXPIRY_WARNING_DAYS",
    "PreflightFailed",
    "PreflightReport",
    "check_files",
    "error_line",
    "files_read_after_drop",
    "load_checked",
    "preflight",
    "require_files",
    "warning_line",
]
