"""Offline checks of the deployment manifests in ``contrib/kubernetes`` and ``contrib/compose``, and of docs/.

Every check returns a list of problems (one line each) instead of raising, so a test can assert that the
shipped manifests have none and that a deliberately broken copy has exactly the expected one.

- Kubernetes objects are validated against the Kubernetes JSON schemas that the ``kubernetes-validate``
  package ships (strict: unknown fields are errors). The PodMonitor is a CRD that package has no schema for;
  :data:`PODMONITOR_SCHEMA` is a hand-written subset of the Prometheus Operator's ``monitoring.coreos.com/v1``
  PodMonitor (the fields these manifests use, unknown fields refused).
- The kustomization is rendered with ``kubectl kustomize`` when kubectl is installed, else by
  :func:`render_emulated`, which implements the subset of kustomize these manifests use (``resources``,
  ``configMapGenerator``, ``secretGenerator``) and reports any other key as unsupported.
- The compose file is validated against the compose-spec JSON schema vendored by ``check-jsonschema``.
- Cross-references: volumes, ConfigMap/Secret names and keys, env names (only what tunmesh reads),
  ports and probes against the config's ``listen_port``, selectors, the NetworkPolicy, and the mounted
  config itself, loaded with :func:`tunmesh.config.load_config_data` against the files the pod would see and
  checked by the daemon's preflight (:func:`tunmesh.preflight.check_files`).
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml

from tunmesh.cli import generate_secret
from tunmesh.config import CONFIG_PATH_ENV, ConfigError, TunMeshConfig, load_config_data, resolve_config_path
from tunmesh.config.schema import Option, SubGroup, members
from tunmesh.preflight import check_files
from tunmesh.tls.certs import write_self_signed

REPO = Path(__file__).resolve().parent.parent
CONTRIB = REPO / "contrib"
#: Relative to a copy of ``contrib/``: the kustomizations, the compose directory, and the git-ignored
#: directories where an operator creates the cluster secret and the TLS pair before the first apply.
KUSTOMIZATIONS = ("kubernetes", "kubernetes/monitoring")
COMPOSE = "compose"
SECRET_DIRS = ("kubernetes/base/secrets", "compose/secrets")
SECRET_FILES = ("cluster-secret", "tls.crt", "tls.key")

KUBERNETES_VERSION = "1.30"
TUNMESH_CONTAINER = "tunmesh"
TUNMESH_CAPABILITIES = frozenset({"NET_ADMIN", "SETUID", "SETGID"})
TUN_DEVICE = "/dev/net/tun"
#: What the Downward API gives a pod, for resolving env values as the kubelet would.
FAKE_FIELDS = {
    "status.podIP": "10.244.1.7",
    "status.hostIP": "192.0.2.10",
    "metadata.name": "tunmesh-example-stateful-0",
    "metadata.namespace": "default",
    "spec.nodeName": "node-1",
}
#: The underlay of the compose example must stay in the benchmarking range (never routed on the internet).
COMPOSE_UNDERLAY = ipaddress.ip_network("198.18.0.0/15")

PODMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$",
                            },
                            "scrapeTimeout": {"type": "string"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                            "tlsConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "insecureSkipVerify": {"type": "boolean"},
                                    "serverName": {"type": "string"},
                                    "ca": {"type": "object"},
                                    "cert": {"type": "object"},
                                    "keySecret": {"type": "object"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


# ------------------------------------------------------------------------------------------------ inputs


def prepared_copy(dest: Path) -> Path:
    """Copy ``contrib/kubernetes`` and ``contrib/compose`` to ``dest`` and create the secret files an operator
    creates before the first apply (``tunmesh gen-secret`` and ``tunmesh gen-cert``). Returns ``dest``."""
    dest = dest.absolute()
    for name in ("kubernetes", COMPOSE):
        shutil.copytree(CONTRIB / name, dest / name)
    for rel in SECRET_DIRS:
        d = dest / rel
        (d / "cluster-secret").write_text(generate_secret() + "\n")
        write_self_signed(d / "tls.crt", d / "tls.key", hostnames=["tunmesh.local"])
        for f in SECRET_FILES:
            (d / f).chmod(0o640)
    return dest


def load_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def edit_yaml(path: Path, edit: Any) -> None:
    """Apply ``edit(documents)`` (in place) to a multi-document YAML file; used to break copies in tests."""
    docs = load_docs(path)
    edit(docs)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


# ------------------------------------------------------------------------------------------------ render


def render(directory: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects a kustomization produces: ``kubectl kustomize`` when available, else the emulation."""
    if shutil.which("kubectl"):
        return render_with_kubectl(directory)
    return render_emulated(directory)


def render_with_kubectl(directory: Path) -> tuple[list[dict[str, Any]], list[str]]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        return [], [f"kubectl kustomize {directory.name}: {lines[-1]}"]
    return [d for d in yaml.safe_load_all(proc.stdout) if d is not None], []


_KUSTOMIZE_KEYS = frozenset({"apiVersion", "kind", "resources", "configMapGenerator", "secretGenerator"})


def render_emulated(directory: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The kustomize subset these manifests use. Names get no hash suffix (references stay consistent)."""
    problems: list[str] = []
    objects: list[dict[str, Any]] = []
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        return [], [f"{directory}: no kustomization.yaml"]
    k = yaml.safe_load(kfile.read_text()) or {}
    for key in sorted(set(k) - _KUSTOMIZE_KEYS):
        problems.append(f"{kfile.name}: key {key!r} is not supported by the emulated kustomize")
    for res in k.get("resources", []):
        target = directory / res
        if target.is_dir():
            sub, sub_problems = render_emulated(target)
            objects += sub
            problems += sub_problems
        elif target.is_file():
            objects += load_docs(target)
        else:
            problems.append(f"{kfile}: resource {res!r} does not exist")
    for gen, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for spec in k.get(gen, []):
            data: dict[str, str] = {}
            for item in spec.get("files", []):
                key, _, rel = item.partition("=") if "=" in item else (Path(item).name, "", item)
                source = directory / rel
                if not source.is_file():
                    problems.append(f"{kfile}: {gen} {spec['name']}: file {rel!r} does not exist")
                    continue
                data[key] = source.read_text()
            for item in spec.get("literals", []):
                key, _, value = item.partition("=")
                data[key] = value
            obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
            if kind == "Secret":
                obj["type"] = spec.get("type", "Opaque")
                obj["data"] = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
            else:
                obj["data"] = data
            objects.append(obj)
    return objects, problems


# ------------------------------------------------------------------------------------------------ schemas


def _name(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def schema_problems(objects: Iterable[dict[str, Any]]) -> list[str]:
    """Every object against its Kubernetes schema (strict), the PodMonitor against :data:`PODMONITOR_SCHEMA`."""
    problems = []
    for obj in objects:
        if obj.get("kind") == "PodMonitor":
            validator = jsonschema.Draft202012Validator(PODMONITOR_SCHEMA)
            for err in validator.iter_errors(obj):
                problems.append(f"{_name(obj)}: {'.'.join(map(str, err.path))}: {err.message}")
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{_name(obj)}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{_name(obj)}: {e.message}")
    return problems


def compose_schema() -> dict[str, Any]:
    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return schema


def compose_schema_problems(doc: Any) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"compose: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


# ------------------------------------------------------------------------------------------------ tunmesh facts


@functools.cache
def env_names_read() -> frozenset[str]:
    """The environment variables tunmesh reads: every ``env`` of the config schema, the config path variable,
    and any other ``TUNMESH_*`` name the package spells out as a whole string literal."""
    names = {CONFIG_PATH_ENV}

    def walk(cls: type) -> None:
        for _, meta in members(cls):
            if isinstance(meta, Option) and meta.env:
                names.add(meta.env)
            elif isinstance(meta, SubGroup):
                walk(meta.type.cls)
            if isinstance(meta, Option) and hasattr(meta.type, "value") and hasattr(meta.type.value, "cls"):
                walk(meta.type.value.cls)  # map of groups (bootstrap_groups)

    walk(TunMeshConfig)
    for path in (REPO / "tunmesh").rglob("*.py"):
        names.update(re.findall(r"""["'](TUNMESH_[A-Z0-9_]+)["']""", path.read_text(encoding="utf-8")))
    return frozenset(names)


def _walk_strings(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _walk_strings(v, f"{path}/{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _walk_strings(v, f"{path}/{i}")
    elif isinstance(data, str):
        yield path, data


def _set_path(data: Any, path: str, value: Any) -> None:
    parts = path.strip("/").split("/")
    for p in parts[:-1]:
        data = data[int(p)] if isinstance(data, list) else data[p]
    data[int(parts[-1]) if isinstance(data, list) else parts[-1]] = value


def load_mounted_config(
    who: str, root: Path, mounts: Iterable[str], env: Mapping[str, str]
) -> tuple[TunMeshConfig | None, list[str]]:
    """Load the config a container would load: ``root`` holds the container's mounted files at their paths.

    Every absolute path the config names must lie under one of ``mounts``; it is redirected into ``root``.
    """
    root = root.absolute()
    mount_paths = [PurePosixPath(m) for m in mounts]

    def mounted(p: str) -> bool:
        return any(PurePosixPath(p) == m or m in PurePosixPath(p).parents for m in mount_paths)

    config_path = str(resolve_config_path(None, env))
    if not mounted(config_path):
        return None, [f"{who}: config file {config_path} is in no mounted volume"]
    host_config = root / config_path.lstrip("/")
    if not host_config.is_file():
        return None, [f"{who}: config file {config_path} is not in its volume"]
    data = yaml.safe_load(host_config.read_text())
    problems = []
    for key_path, value in list(_walk_strings(data)):
        if value.startswith("/"):
            if not mounted(value):
                problems.append(f"{who}: config {key_path} names {value}, which no volumeMount provides")
            _set_path(data, key_path, str(root / value.lstrip("/")))
    if problems:
        return None, problems
    try:
        cfg = load_config_data(data, host_config.parent, env=dict(env), source=config_path)
    except ConfigError as e:
        return None, [f"{who}: config: {p}" for p in e.errors]
    # What the daemon refuses before it opens the TUN: key/certificate, key strength, validity, trust bundle.
    refused = check_files(cfg, host_config).errors
    if refused:
        return None, [f"{who}: preflight: {p}" for p in refused]
    return cfg, []


# ------------------------------------------------------------------------------------------------ kubernetes


def _matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def _resolve_env(
    who: str, container: Mapping[str, Any], by_kind: Mapping[tuple[str, str], dict[str, Any]]
) -> tuple[dict[str, str], list[str]]:
    """The container's environment as the kubelet builds it ($(VAR) refers to earlier entries only)."""
    env: dict[str, str] = {}
    problems = []
    known = env_names_read()
    for entry in container.get("env", []):
        name = entry["name"]
        if name.startswith("TUNMESH_") and name not in known:
            problems.append(f"{who}: env {name} is not read by tunmesh")
        if "value" in entry:
            value = entry["value"]
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value):
                if ref not in env:
                    problems.append(f"{who}: env {name} refers to $({ref}), not defined before it")
            env[name] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value
            )
            continue
        source = entry.get("valueFrom", {})
        if "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            if field not in FAKE_FIELDS:
                problems.append(f"{who}: env {name}: unexpected fieldPath {field}")
            env[name] = FAKE_FIELDS.get(field, "")
        for ref_key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if ref_key in source:
                ref = source[ref_key]
                obj = by_kind.get((kind, ref["name"]))
                if obj is None or ref["key"] not in obj.get("data", {}):
                    problems.append(f"{who}: env {name}: {kind} {ref['name']} has no key {ref['key']}")
                else:
                    raw = obj["data"][ref["key"]]
                    env[name] = base64.b64decode(raw).decode() if kind == "Secret" else raw
    return env, problems


def _materialize(
    who: str,
    container: Mapping[str, Any],
    volumes: Mapping[str, dict[str, Any]],
    by_kind: Mapping[tuple[str, str], dict[str, Any]],
    root: Path,
) -> list[str]:
    """Write the files of the container's ConfigMap and Secret mounts under ``root`` at their mount paths."""
    problems = []
    for mount in container.get("volumeMounts", []):
        vol = volumes.get(mount["name"])
        if vol is None:
            problems.append(f"{who}: volumeMount {mount['name']} has no volume")
            continue
        for source_key, kind, name_key in (
            ("configMap", "ConfigMap", "name"),
            ("secret", "Secret", "secretName"),
        ):
            if source_key not in vol:
                continue
            obj = by_kind.get((kind, vol[source_key][name_key]))
            if obj is None:
                problems.append(
                    f"{who}: volume {mount['name']}: {kind} {vol[source_key][name_key]} does not exist"
                )
                continue
            data = obj.get("data", {})
            items = vol[source_key].get("items") or [{"key": k, "path": k} for k in data]
            target = root / mount["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            for item in items:
                if item["key"] not in data:
                    problems.append(f"{who}: volume {mount['name']}: {kind} has no key {item['key']}")
                    continue
                raw = data[item["key"]]
                (target / item["path"]).write_bytes(
                    base64.b64decode(raw) if kind == "Secret" else raw.encode()
                )
    return problems


def _port_number(container: Mapping[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def _tunmesh_container_problems(
    who: str, pod_spec: Mapping[str, Any], c: Mapping[str, Any], cfg: TunMeshConfig, env: Mapping[str, str]
) -> list[str]:
    problems = []
    port = cfg.control_api.listen_port
    if port not in [p.get("containerPort") for p in c.get("ports", [])]:
        problems.append(f"{who}: no containerPort {port} (the config's listen_port)")
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = c.get(probe, {}).get("httpGet")
        if not get:
            problems.append(f"{who}: no {probe} httpGet")
            continue
        if get.get("path") != path:
            problems.append(f"{who}: {probe} path {get.get('path')}, expected {path}")
        if get.get("scheme") != "HTTPS":
            problems.append(f"{who}: {probe} scheme {get.get('scheme')}, expected HTTPS")
        if _port_number(c, get.get("port")) != port:
            problems.append(f"{who}: {probe} port {get.get('port')} is not listen_port {port}")
    url = urlsplit(cfg.clustering.control_api_advertise_url)
    if url.port != port:
        problems.append(f"{who}: advertise URL port {url.port} is not listen_port {port}")
    sc = c.get("securityContext", {})
    caps = sc.get("capabilities", {})
    if caps.get("drop") != ["ALL"]:
        problems.append(f"{who}: securityContext.capabilities.drop must be [ALL]")
    if set(caps.get("add", [])) != TUNMESH_CAPABILITIES:
        problems.append(f"{who}: securityContext.capabilities.add must be {sorted(TUNMESH_CAPABILITIES)}")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{who}: securityContext.readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{who}: securityContext.allowPrivilegeEscalation must be false")
    if sc.get("privileged"):
        problems.append(f"{who}: must not be privileged")
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    tun_mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == TUN_DEVICE]
    host = [volumes.get(m["name"], {}).get("hostPath") for m in tun_mounts]
    plugin = [r for r in c.get("resources", {}).get("limits", {}) if "tun" in r]
    if not plugin and host != [{"path": TUN_DEVICE, "type": "CharDevice"}]:
        problems.append(
            f"{who}: {TUN_DEVICE} needs a hostPath CharDevice mount (or a device-plugin resource)"
        )
    # The node drops to process.uid/gid: mounted secrets must stay readable by it (SIGHUP re-reads them).
    gid = cfg.process.gid
    fs_group = pod_spec.get("securityContext", {}).get("fsGroup")
    for m in c.get("volumeMounts", []):
        secret = volumes.get(m["name"], {}).get("secret")
        if secret is None:
            continue
        mode = secret.get("defaultMode", 0o644)
        if not (mode & 0o004 or (mode & 0o040 and gid is not None and fs_group == gid)):
            problems.append(
                f"{who}: secret volume {m['name']} (mode {mode:o}, fsGroup {fs_group}) is not readable "
                f"by process.uid/gid {cfg.process.uid}/{gid}"
            )
    return problems


def kubernetes_problems(objects: list[dict[str, Any]], scratch: Path) -> list[str]:
    """Cross-references between the rendered objects; ``scratch`` is an empty directory for mounted files."""
    problems: list[str] = []
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    if not {"Deployment", "StatefulSet"} <= {w["kind"] for w in workloads}:
        problems.append("expected a Deployment and a StatefulSet example")
    pods: list[tuple[str, dict[str, str], dict[str, Any], int]] = []  # (who, labels, tunmesh container, port)
    configs: list[TunMeshConfig] = []
    for w in workloads:
        who = _name(w)
        template = w["spec"]["template"]
        labels = template.get("metadata", {}).get("labels", {})
        spec = template["spec"]
        if not _matches(w["spec"].get("selector", {}).get("matchLabels"), labels):
            problems.append(f"{who}: selector does not match the pod labels")
        if w["kind"] == "StatefulSet":
            svc = by_kind.get(("Service", w["spec"].get("serviceName", "")))
            if svc is None or svc["spec"].get("clusterIP") != "None":
                problems.append(
                    f"{who}: serviceName {w['spec'].get('serviceName')} is not a headless Service"
                )
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("containers", []):
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problems.append(f"{who}/{c['name']}: volumeMount {m['name']} has no volume")
        tunmesh = [c for c in spec.get("containers", []) if c["name"] == TUNMESH_CONTAINER]
        if not tunmesh:
            problems.append(f"{who}: no container named {TUNMESH_CONTAINER}")
            continue
        c = tunmesh[0]
        cwho = f"{who}/{c['name']}"
        env, env_problems = _resolve_env(cwho, c, by_kind)
        problems += env_problems
        root = scratch / f"{w['kind']}-{w['metadata']['name']}"
        mat = _materialize(cwho, c, volumes, by_kind, root)
        problems += mat
        if mat:
            continue
        cfg, cfg_problems = load_mounted_config(
            cwho, root, [m["mountPath"] for m in c.get("volumeMounts", [])], env
        )
        problems += cfg_problems
        if cfg is None:
            continue
        configs.append(cfg)
        problems += _tunmesh_container_problems(cwho, spec, c, cfg, env)
        pods.append((who, labels, c, cfg.control_api.listen_port))
    if not pods:
        return problems + ["no tunmesh pod could be checked"]

    # The bootstrap URLs name the headless Service, which lists every tunmesh pod, ready or not.
    for cfg in configs[:1]:
        for group in cfg.clustering.bootstrap_groups.values():
            for raw in group.bootstrap_node_urls:
                url = urlsplit(raw)
                svc = by_kind.get(("Service", (url.hostname or "").split(".")[0]))
                if svc is None:
                    problems.append(f"bootstrap URL {raw}: no Service named {url.hostname}")
                    continue
                s = svc["spec"]
                if s.get("clusterIP") != "None":
                    problems.append(f"{_name(svc)}: must be headless (clusterIP: None)")
                if s.get("publishNotReadyAddresses") is not True:
                    problems.append(f"{_name(svc)}: must set publishNotReadyAddresses: true")
                for who, labels, c, port in pods:
                    if not _matches(s.get("selector"), labels):
                        problems.append(f"{_name(svc)}: selector does not select the pods of {who}")
                    sp = [p for p in s.get("ports", []) if p.get("port") == url.port]
                    if not sp or _port_number(c, sp[0].get("targetPort", sp[0]["port"])) != port:
                        problems.append(
                            f"{_name(svc)}: port {url.port} does not reach listen_port {port} of {who}"
                        )

    # NetworkPolicies that select the tunmesh pods open the tunmesh port, to tunmesh pods only.
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    # TCP: the API and the packet links; UDP: the datagram path (small packets; without it they use TCP).
    mesh_rule_found = {(who, proto): False for who, *_ in pods for proto in ("TCP", "UDP")}
    for pol in policies:
        sel = pol["spec"].get("podSelector", {}).get("matchLabels")
        selected = [p for p in pods if _matches(sel, p[1])]
        for rule in pol["spec"].get("ingress", []):
            if not rule.get("from"):
                problems.append(f"{_name(pol)}: an ingress rule without 'from' opens the pods to everyone")
                continue
            for who, _labels, c, port in selected:
                opened = {
                    p.get("protocol", "TCP") for p in rule.get("ports", []) if _port_number(c, p.get("port")) == port
                }
                from_mesh = all(
                    "namespaceSelector" not in peer
                    and "ipBlock" not in peer
                    and all(
                        _matches(peer.get("podSelector", {}).get("matchLabels"), lb) for _, lb, _, _ in pods
                    )
                    for peer in rule["from"]
                )
                for proto in opened if from_mesh else ():
                    mesh_rule_found[(who, proto)] = True
    for (who, proto), found in mesh_rule_found.items():
        if not found and proto == "TCP":
            problems.append(f"no NetworkPolicy opens the tunmesh port of {who} to the tunmesh pods")
        elif not found:
            problems.append(f"no NetworkPolicy opens the tunmesh port of {who} over UDP (the datagram path)")

    for mon in (o for o in objects if o["kind"] == "PodMonitor"):
        sel = mon["spec"].get("selector", {}).get("matchLabels")
        for who, labels, c, port in pods:
            if not _matches(sel, labels):
                problems.append(f"{_name(mon)}: selector does not select the pods of {who}")
            for ep in mon["spec"].get("podMetricsEndpoints", []):
                if _port_number(c, ep.get("port")) != port:
                    problems.append(f"{_name(mon)}: port {ep.get('port')} is not the tunmesh port of {who}")
                if ep.get("path") != "/metrics" or ep.get("scheme") != "https":
                    problems.append(f"{_name(mon)}: must scrape https /metrics")
        for cfg in configs:
            if cfg.monitoring.method != "prometheus":
                problems.append(f"{_name(mon)}: the config does not expose metrics (monitoring.method)")
    return problems


def check_kustomization(directory: Path, scratch: Path) -> list[str]:
    """Render, validate and cross-check one kustomization; every problem found, none when all is well."""
    objects, problems = render(directory)
    if problems:
        return problems
    return schema_problems(objects) + kubernetes_problems(objects, scratch)


# ------------------------------------------------------------------------------------------------ compose


def _compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def check_compose(directory: Path, scratch: Path) -> list[str]:
    """The compose file against the compose-spec schema, then the app + sidecar groups and their config."""
    path = directory / "compose.yaml"
    doc = yaml.safe_load(path.read_text())
    problems = compose_schema_problems(doc)
    if problems:
        return problems
    services: dict[str, dict[str, Any]] = doc.get("services", {})
    networks: dict[str, Any] = doc.get("networks") or {}
    subnets = {
        name: [ipaddress.ip_network(c["subnet"]) for c in ((net or {}).get("ipam") or {}).get("config", [])]
        for name, net in networks.items()
    }
    for name, nets in subnets.items():
        for n in nets:
            if not n.subnet_of(COMPOSE_UNDERLAY):  # type: ignore[arg-type]
                problems.append(f"compose: network {name} subnet {n} is outside {COMPOSE_UNDERLAY}")
    sidecars = {n: s for n, s in services.items() if TUN_DEVICE in " ".join(s.get("devices", []))}
    apps: dict[str, list[str]] = {n: [] for n in sidecars}
    for name, s in services.items():
        mode = s.get("network_mode", "")
        if mode.startswith("service:"):
            target = mode.split(":", 1)[1]
            if target not in sidecars:
                problems.append(f"compose: {name}: network_mode {mode} is not a tunmesh sidecar")
            else:
                apps[target].append(name)
                if target not in (s.get("depends_on") or []):
                    problems.append(f"compose: {name}: must depend_on {target}")
    groups = [n for n, a in apps.items() if a]
    if len(groups) < 3:
        problems.append(f"compose: expected three app + sidecar groups, found {len(groups)}")
    addresses: dict[str, str] = {}
    configs: list[TunMeshConfig] = []
    for name, s in sidecars.items():
        who = f"compose: {name}"
        if s.get("cap_drop") != ["ALL"] or set(s.get("cap_add", [])) != TUNMESH_CAPABILITIES:
            problems.append(f"{who}: must drop ALL capabilities and add only {sorted(TUNMESH_CAPABILITIES)}")
        if s.get("read_only") is not True:
            problems.append(f"{who}: read_only must be true")
        service_nets = s.get("networks") or {}
        if isinstance(service_nets, list):
            service_nets = dict.fromkeys(service_nets)
        addr = None
        for net_name, net in service_nets.items():
            if net_name not in subnets:
                problems.append(f"{who}: network {net_name} is not declared")
            elif net and net.get("ipv4_address"):
                addr = net["ipv4_address"]
                if not any(ipaddress.ip_address(addr) in n for n in subnets[net_name]):
                    problems.append(f"{who}: {addr} is outside the subnet of {net_name}")
        if addr is None:
            problems.append(f"{who}: needs a fixed ipv4_address for its advertise URL")
            continue
        if addr in addresses.values():
            problems.append(f"{who}: address {addr} is used twice")
        addresses[name] = addr
        env = _compose_env(s)
        known = env_names_read()
        for var in env:
            if var.startswith("TUNMESH_") and var not in known:
                problems.append(f"{who}: env {var} is not read by tunmesh")
        root = scratch / name
        mounts = []
        for vol in s.get("volumes", []):
            source, target = vol.split(":")[:2] if isinstance(vol, str) else (vol["source"], vol["target"])
            host = (directory / source).resolve()
            if not host.exists():
                problems.append(f"{who}: volume source {source} does not exist")
                continue
            dest = root / target.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(host, dest)
            mounts.append(target)
        cfg, cfg_problems = load_mounted_config(who, root, mounts, env)
        problems += cfg_problems
        if cfg is None:
            continue
        configs.append(cfg)
        url = urlsplit(cfg.clustering.control_api_advertise_url)
        if url.hostname != addr or url.port != cfg.control_api.listen_port:
            problems.append(
                f"{who}: advertise URL {url.geturl()} is not {addr}:{cfg.control_api.listen_port}"
            )
    for cfg in configs[:1]:
        for group in cfg.clustering.bootstrap_groups.values():
            for raw in group.bootstrap_node_urls:
                url = urlsplit(raw)
                if url.hostname not in addresses.values() and url.hostname not in sidecars:
                    problems.append(f"compose: bootstrap URL {raw} is no sidecar")
                elif url.port != cfg.control_api.listen_port:
                    problems.append(f"compose: bootstrap URL {raw} is not on listen_port")
    return problems


def broken(docs: list[Any], kind: str, edit: Any) -> None:
    """For :func:`edit_yaml`: apply ``edit`` to the first document of ``kind`` (a deep copy is not needed)."""
    for d in docs:
        if d.get("kind") == kind:
            edit(d)
            return
    raise AssertionError(f"no {kind} in the file")


# ------------------------------------------------------------------------------------------------ docs

#: Paths that only exist on one machine (a checkout, a home directory); docs must link relatively instead.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home|Users)/[\w.-]+")


def machine_specific_paths(directory: Path) -> list[str]:
    """``file:line: path`` for every machine-specific absolute path in the Markdown files under ``directory``."""
    found = []
    for path in sorted(directory.rglob("*.md")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [f"{path.name}:{n}: {m.group(0)}" for m in MACHINE_PATH.finditer(line)]
    return found
