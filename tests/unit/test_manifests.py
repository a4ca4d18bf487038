"""The Kubernetes and Compose manifests in contrib/ are valid and consistent with tunmesh (issue 7).

Every check runs on the shipped files and on a deliberately broken copy, so each is shown to catch what it
is for. The checks themselves live in :mod:`tests.deployment`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from tests import deployment as d
from tunmesh.tls.certs import write_self_signed

KUSTOMIZATION = "kubernetes"
MONITORING = "kubernetes/monitoring"
BASE = "kubernetes/base"
COMPOSE = "compose"


def _container(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def find(workload: dict[str, Any]) -> dict[str, Any]:
        for c in workload["spec"]["template"]["spec"]["containers"]:
            if c["name"] == name:
                return c
        raise AssertionError(name)

    return find


_tunmesh = _container("tunmesh")


def _env(workload: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = _tunmesh(workload)["env"]
    return env


def _volume(workload: dict[str, Any], name: str) -> dict[str, Any]:
    for v in workload["spec"]["template"]["spec"]["volumes"]:
        if v["name"] == name:
            return v
    raise AssertionError(name)


class _Case(unittest.TestCase):
    def copy(self) -> Path:
        return d.prepared_copy(Path(self.mktemp()))

    def scratch(self) -> Path:
        path = Path(self.mktemp())
        path.mkdir(parents=True)
        return path

    def check(self, root: Path, target: str) -> list[str]:
        if target == COMPOSE:
            return d.check_compose(root / COMPOSE, self.scratch())
        return d.check_kustomization(root / target, self.scratch())

    def assertCaught(self, root: Path, expected: str, target: str = KUSTOMIZATION) -> None:
        problems = self.check(root, target)
        self.assertTrue(any(expected in p for p in problems), f"{expected!r} not among {problems}")

    def breakYaml(self, root: Path, rel: str, kind: str, edit: Callable[[dict[str, Any]], Any]) -> None:
        d.edit_yaml(root / rel, lambda docs: d.broken(docs, kind, edit))

    def breakText(self, root: Path, rel: str, old: str, new: str) -> None:
        path = root / rel
        text = path.read_text()
        self.assertIn(old, text)
        path.write_text(text.replace(old, new, 1))


class ShippedManifestsTests(_Case):
    def test_every_kustomization_renders_validates_and_cross_checks_clean(self) -> None:
        root = self.copy()
        for target in d.KUSTOMIZATIONS:
            self.assertEqual(self.check(root, target), [], target)

    def test_the_emulated_kustomize_gives_clean_objects_too(self) -> None:
        root = self.copy()
        for target in d.KUSTOMIZATIONS:
            objects, problems = d.render_emulated(root / target)
            self.assertEqual(problems, [])
            self.assertEqual(d.schema_problems(objects) + d.kubernetes_problems(objects, self.scratch()), [])

    def test_the_emulated_kustomize_lists_the_objects_kubectl_renders(self) -> None:
        if shutil.which("kubectl") is None:
            raise unittest.SkipTest("kubectl is not installed: only the emulation is checked")
        root = self.copy()
        for target in d.KUSTOMIZATIONS:
            real, problems = d.render_with_kubectl(root / target)
            self.assertEqual(problems, [])
            emulated, _ = d.render_emulated(root / target)
            # kubectl appends a content hash to generated names; the emulation does not.
            names = {(o["kind"], o["metadata"]["name"]) for o in emulated}
            for o in real:
                name = o["metadata"]["name"]
                if o["kind"] in ("ConfigMap", "Secret"):
                    name = name.rsplit("-", 1)[0]
                self.assertIn((o["kind"], name), names)
            self.assertEqual(len(real), len(emulated))

    def test_the_compose_file_validates_and_cross_checks_clean(self) -> None:
        self.assertEqual(self.check(self.copy(), COMPOSE), [])

    def test_the_env_names_known_include_the_schema_overrides(self) -> None:
        names = d.env_names_read()
        self.assertTrue({"TUNMESH_CONFIG_PATH", "TUNMESH_CLUSTER_SECRET", "TUNMESH_ADVERTISE_URL"} <= names)
        self.assertNotIn("TUNMESH_ADVERTISE", names)

    def test_no_secret_file_is_committed_and_generated_ones_are_ignored(self) -> None:
        git = shutil.which("git")
        if git is None or not (d.REPO / ".git").exists():
            raise unittest.SkipTest("not a git checkout")
        for rel in d.SECRET_DIRS:
            where = f"contrib/{rel}"
            tracked = subprocess.run(
                [git, "ls-files", where], cwd=d.REPO, capture_output=True, text=True, check=True
            ).stdout.split()
            self.assertEqual(tracked, [f"{where}/.gitignore"])
            ignored = subprocess.run(
                [git, "check-ignore", *(f"{where}/{f}" for f in d.SECRET_FILES)],
                cwd=d.REPO,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            self.assertEqual(ignored, [f"{where}/{f}" for f in d.SECRET_FILES])


class KustomizeBreakageTests(_Case):
    def test_a_missing_resource_is_caught(self) -> None:
        root = self.copy()
        self.breakText(root, f"{BASE}/kustomization.yaml", "  - service.yaml\n", "  - services.yaml\n")
        self.assertCaught(root, "services.yaml")

    def test_the_emulation_catches_a_missing_resource_and_generator_file(self) -> None:
        root = self.copy()
        self.breakText(root, f"{BASE}/kustomization.yaml", "  - service.yaml\n", "  - services.yaml\n")
        (root / BASE / "secrets" / "tls.key").unlink()
        _, problems = d.render_emulated(root / KUSTOMIZATION)
        self.assertTrue(any("'services.yaml' does not exist" in p for p in problems), problems)
        self.assertTrue(any("secrets/tls.key" in p for p in problems), problems)

    def test_the_emulation_refuses_kustomize_features_it_does_not_implement(self) -> None:
        root = self.copy()
        self.breakText(root, f"{BASE}/kustomization.yaml", "resources:\n", "namePrefix: x-\nresources:\n")
        _, problems = d.render_emulated(root / KUSTOMIZATION)
        self.assertTrue(any("'namePrefix' is not supported" in p for p in problems), problems)

    def test_missing_secret_files_stop_the_render(self) -> None:
        root = self.copy()
        (root / BASE / "secrets" / "cluster-secret").unlink()
        self.assertCaught(root, "cluster-secret")


class KubernetesSchemaBreakageTests(_Case):
    def test_a_wrongly_typed_field_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root, f"{BASE}/deployment.yaml", "Deployment", lambda w: w["spec"].update(replicas="three")
        )
        self.assertCaught(root, "spec.replicas")

    def test_an_unknown_field_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/statefulset.yaml",
            "StatefulSet",
            lambda w: _tunmesh(w).update(imagePullPolcy="Always"),
        )
        self.assertCaught(root, "imagePullPolcy")

    def test_a_podmonitor_outside_its_schema_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{MONITORING}/podmonitor.yaml",
            "PodMonitor",
            lambda m: m["spec"]["podMetricsEndpoints"][0].update(scheme="httpz"),
        )
        self.assertCaught(root, "httpz", MONITORING)

    def test_an_unknown_podmonitor_field_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root, f"{MONITORING}/podmonitor.yaml", "PodMonitor", lambda m: m["spec"].update(podSelector={})
        )
        self.assertCaught(root, "podSelector", MONITORING)


class KubernetesCrossReferenceBreakageTests(_Case):
    def test_a_volume_mount_without_its_volume_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root, f"{BASE}/deployment.yaml", "Deployment", lambda w: _volume(w, "tls").update(name="tlz")
        )
        self.assertCaught(root, "volumeMount tls has no volume")

    def test_an_app_container_mount_without_its_volume_is_caught(self) -> None:
        root = self.copy()

        def edit(w: dict[str, Any]) -> None:
            _container("app")(w)["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]

        self.breakYaml(root, f"{BASE}/statefulset.yaml", "StatefulSet", edit)
        self.assertCaught(root, "app: volumeMount data has no volume")

    def test_a_configmap_that_does_not_exist_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/deployment.yaml",
            "Deployment",
            lambda w: _volume(w, "config")["configMap"].update(name="tunmesh-conf"),
        )
        self.assertCaught(root, "ConfigMap tunmesh-conf does not exist")

    def test_a_secret_key_that_does_not_exist_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/deployment.yaml",
            "Deployment",
            lambda w: _volume(w, "tls")["secret"].update(items=[{"key": "cert.pem", "path": "tls.crt"}]),
        )
        self.assertCaught(root, "has no key cert.pem")

    def test_a_config_file_the_pod_does_not_mount_is_caught(self) -> None:
        root = self.copy()
        self.breakText(
            root, f"{BASE}/config.yaml", "/etc/tunmesh/secret/cluster-secret", "/run/secrets/cluster"
        )
        self.assertCaught(root, "names /run/secrets/cluster, which no volumeMount provides")

    def test_a_config_path_outside_the_mounts_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/deployment.yaml",
            "Deployment",
            lambda w: _env(w)[2].update(value="/etc/tunmesh.yaml"),
        )
        self.assertCaught(root, "config file /etc/tunmesh.yaml is in no mounted volume")

    def test_a_key_that_does_not_match_the_certificate_is_caught(self) -> None:
        root = self.copy()
        other = Path(self.mktemp())
        other.mkdir()
        write_self_signed(other / "c.pem", other / "k.pem")
        shutil.copy(other / "k.pem", root / BASE / "secrets" / "tls.key")
        self.assertCaught(root, "preflight: tun_mesh/control_api/ssl/key_file_path")

    def test_an_invalid_config_is_caught(self) -> None:
        root = self.copy()
        self.breakText(root, f"{BASE}/config.yaml", "100.64.0.0/16", "100.64.0.0/33")
        self.assertCaught(root, "network_cidr")

    def test_a_listen_port_that_differs_from_the_container_port_and_probes_is_caught(self) -> None:
        root = self.copy()
        self.breakText(root, f"{BASE}/config.yaml", "listen_port: 4567", "listen_port: 4568")
        problems = self.check(root, KUSTOMIZATION)
        for expected in (
            "no containerPort 4568",
            "readinessProbe port",
            "livenessProbe port",
            "advertise URL port",
        ):
            self.assertTrue(any(expected in p for p in problems), (expected, problems))

    def test_a_probe_on_the_wrong_path_or_scheme_is_caught(self) -> None:
        root = self.copy()

        def edit(w: dict[str, Any]) -> None:
            _tunmesh(w)["readinessProbe"]["httpGet"]["path"] = "/health"
            _tunmesh(w)["livenessProbe"]["httpGet"]["scheme"] = "HTTP"

        self.breakYaml(root, f"{BASE}/deployment.yaml", "Deployment", edit)
        self.assertCaught(root, "readinessProbe path /health, expected /ready")
        self.assertCaught(root, "livenessProbe scheme HTTP, expected HTTPS")

    def test_an_env_name_tunmesh_does_not_read_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/deployment.yaml",
            "Deployment",
            lambda w: _env(w)[1].update(name="TUNMESH_ADVERTISE"),
        )
        self.assertCaught(root, "env TUNMESH_ADVERTISE is not read by tunmesh")

    def test_an_env_reference_to_a_later_variable_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(root, f"{BASE}/deployment.yaml", "Deployment", lambda w: _env(w).reverse())
        self.assertCaught(root, "refers to $(POD_IP), not defined before it")

    def test_capabilities_beyond_the_three_are_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/statefulset.yaml",
            "StatefulSet",
            lambda w: _tunmesh(w)["securityContext"]["capabilities"]["add"].append("SYS_ADMIN"),
        )
        self.assertCaught(root, "capabilities.add must be")

    def test_a_writable_root_filesystem_or_privilege_escalation_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/statefulset.yaml",
            "StatefulSet",
            lambda w: _tunmesh(w)["securityContext"].update(
                readOnlyRootFilesystem=False, allowPrivilegeEscalation=True
            ),
        )
        self.assertCaught(root, "readOnlyRootFilesystem must be true")
        self.assertCaught(root, "allowPrivilegeEscalation must be false")

    def test_a_tun_device_that_is_not_a_char_device_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/deployment.yaml",
            "Deployment",
            lambda w: _volume(w, "dev-net-tun")["hostPath"].update(type="Directory"),
        )
        self.assertCaught(root, "/dev/net/tun needs a hostPath CharDevice mount")

    def test_secrets_unreadable_after_the_privilege_drop_are_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/deployment.yaml",
            "Deployment",
            lambda w: w["spec"]["template"]["spec"].pop("securityContext"),
        )
        self.assertCaught(root, "is not readable by process.uid/gid 10001/10001")

    def test_a_workload_selector_that_misses_its_pods_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/deployment.yaml",
            "Deployment",
            lambda w: w["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "other"}),
        )
        self.assertCaught(root, "selector does not match the pod labels")

    def test_a_statefulset_without_its_headless_service_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root, f"{BASE}/statefulset.yaml", "StatefulSet", lambda w: w["spec"].update(serviceName="tunmesh")
        )
        self.assertCaught(root, "serviceName tunmesh is not a headless Service")

    def test_a_bootstrap_service_that_misses_the_pods_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root, f"{BASE}/service.yaml", "Service", lambda s: s["spec"].update(selector={"app": "x"})
        )
        self.assertCaught(root, "selector does not select the pods of Deployment/tunmesh-example-app")

    def test_a_bootstrap_service_that_hides_unready_pods_or_is_not_headless_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/service.yaml",
            "Service",
            lambda s: s["spec"].update(publishNotReadyAddresses=False, clusterIP=""),
        )
        self.assertCaught(root, "must set publishNotReadyAddresses: true")
        self.assertCaught(root, "must be headless")

    def test_a_bootstrap_url_that_names_no_service_is_caught(self) -> None:
        root = self.copy()
        self.breakText(
            root, f"{BASE}/config.yaml", "https://tunmesh-bootstrap:4567/", "https://tunmesh-boot:4567/"
        )
        self.assertCaught(root, "no Service named tunmesh-boot")

    def test_a_service_port_that_misses_the_listen_port_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root, f"{BASE}/service.yaml", "Service", lambda s: s["spec"]["ports"][0].update(targetPort=4568)
        )
        self.assertCaught(root, "port 4567 does not reach listen_port 4567")

    def test_a_network_policy_that_misses_the_tunmesh_pods_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/networkpolicy.yaml",
            "NetworkPolicy",
            lambda p: p["spec"]["podSelector"].update(matchLabels={"tunmesh/mesh": "other"}),
        )
        self.assertCaught(root, "no NetworkPolicy opens the tunmesh port")

    def test_a_network_policy_on_another_port_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/networkpolicy.yaml",
            "NetworkPolicy",
            lambda p: p["spec"]["ingress"][0]["ports"][0].update(port=80),
        )
        self.assertCaught(root, "no NetworkPolicy opens the tunmesh port")

    def test_a_network_policy_without_the_datagram_port_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/networkpolicy.yaml",
            "NetworkPolicy",
            lambda p: p["spec"]["ingress"][0]["ports"].pop(1),
        )
        self.assertCaught(root, "over UDP (the datagram path)")

    def test_a_network_policy_open_beyond_the_tunmesh_pods_is_caught(self) -> None:
        root = self.copy()

        def edit(p: dict[str, Any]) -> None:
            p["spec"]["ingress"][0]["from"][0]["namespaceSelector"] = {}

        self.breakYaml(root, f"{BASE}/networkpolicy.yaml", "NetworkPolicy", edit)
        self.assertCaught(root, "no NetworkPolicy opens the tunmesh port")

    def test_a_network_policy_rule_open_to_everyone_is_caught(self) -> None:
        root = self.copy()
        self.breakYaml(
            root,
            f"{BASE}/networkpolicy.yaml",
            "NetworkPolicy",
            lambda p: p["spec"]["ingress"].append({"ports": []}),
        )
        self.assertCaught(root, "opens the pods to everyone")

    def test_a_podmonitor_that_misses_the_pods_or_port_is_caught(self) -> None:
        root = self.copy()

        def edit(m: dict[str, Any]) -> None:
            m["spec"]["selector"]["matchLabels"] = {"tunmesh/mesh": "other"}
            m["spec"]["podMetricsEndpoints"][0]["port"] = "metrics"

        self.breakYaml(root, f"{MONITORING}/podmonitor.yaml", "PodMonitor", edit)
        self.assertCaught(root, "PodMonitor/tunmesh: selector does not select", MONITORING)
        self.assertCaught(root, "port metrics is not the tunmesh port", MONITORING)

    def test_a_podmonitor_without_metrics_enabled_is_caught(self) -> None:
        root = self.copy()
        self.breakText(root, f"{BASE}/config.yaml", "method: prometheus", "method: none")
        self.assertCaught(root, "does not expose metrics", MONITORING)


class ComposeBreakageTests(_Case):
    rel = f"{COMPOSE}/compose.yaml"

    def test_a_key_outside_the_compose_spec_is_caught(self) -> None:
        root = self.copy()
        self.breakText(
            root, self.rel, '    network_mode: "service:tunmesh-1"', '    network-mode: "service:tunmesh-1"'
        )
        self.assertCaught(root, "network-mode", COMPOSE)

    def test_an_app_on_a_missing_sidecar_is_caught(self) -> None:
        root = self.copy()
        self.breakText(
            root, self.rel, 'network_mode: "service:tunmesh-3"', 'network_mode: "service:tunmesh-9"'
        )
        self.assertCaught(root, "network_mode service:tunmesh-9 is not a tunmesh sidecar", COMPOSE)
        self.assertCaught(root, "expected three app + sidecar groups, found 2", COMPOSE)

    def test_an_underlay_outside_the_benchmarking_range_is_caught(self) -> None:
        root = self.copy()
        self.breakText(root, self.rel, "subnet: 198.18.30.0/24", "subnet: 10.30.0.0/24")
        self.assertCaught(root, "outside 198.18.0.0/15", COMPOSE)
        self.assertCaught(root, "198.18.30.11 is outside the subnet of underlay", COMPOSE)

    def test_an_advertise_url_that_is_not_the_containers_address_is_caught(self) -> None:
        root = self.copy()
        self.breakText(
            root,
            self.rel,
            "TUNMESH_ADVERTISE_URL: https://198.18.30.12:4567/",
            "TUNMESH_ADVERTISE_URL: https://198.18.30.11:4567/",
        )
        self.assertCaught(
            root, "tunmesh-2: advertise URL https://198.18.30.11:4567/ is not 198.18.30.12:4567", COMPOSE
        )

    def test_a_duplicate_address_is_caught(self) -> None:
        root = self.copy()
        self.breakText(root, self.rel, "ipv4_address: 198.18.30.13", "ipv4_address: 198.18.30.12")
        self.assertCaught(root, "address 198.18.30.12 is used twice", COMPOSE)

    def test_an_env_name_tunmesh_does_not_read_is_caught(self) -> None:
        root = self.copy()
        self.breakText(
            root,
            self.rel,
            "TUNMESH_CONFIG_PATH: /etc/tunmesh/config.yaml",
            "TUNMESH_CONFIG: /etc/tunmesh/config.yaml",
        )
        self.assertCaught(root, "env TUNMESH_CONFIG is not read by tunmesh", COMPOSE)

    def test_a_missing_bind_mount_source_is_caught(self) -> None:
        root = self.copy()
        shutil.rmtree(root / COMPOSE / "secrets")
        self.assertCaught(root, "volume source ./secrets does not exist", COMPOSE)

    def test_a_config_file_the_sidecar_cannot_load_is_caught(self) -> None:
        root = self.copy()
        (root / COMPOSE / "secrets" / "tls.key").write_text("not a key\n")
        self.breakText(
            root,
            f"{COMPOSE}/config.yaml",
            "secret_file: /etc/tunmesh/secrets/cluster-secret",
            "secret: short",
        )
        self.assertCaught(root, "config: tun_mesh/clustering/auth", COMPOSE)

    def test_a_bootstrap_url_that_is_no_sidecar_is_caught(self) -> None:
        root = self.copy()
        self.breakText(
            root, f"{COMPOSE}/config.yaml", "https://198.18.30.13:4567/", "https://198.18.30.14:4567/"
        )
        self.assertCaught(root, "bootstrap URL https://198.18.30.14:4567/ is no sidecar", COMPOSE)

    def test_extra_capabilities_or_a_writable_root_are_caught(self) -> None:
        root = self.copy()
        self.breakText(
            root,
            self.rel,
            "cap_add: [NET_ADMIN, SETUID, SETGID]",
            "cap_add: [NET_ADMIN, SETUID, SETGID, SYS_ADMIN]",
        )
        self.breakText(
            root, self.rel, "  read_only: true\n  # The sidecar", "  read_only: false\n  # The sidecar"
        )
        self.assertCaught(root, "must drop ALL capabilities", COMPOSE)
        self.assertCaught(root, "read_only must be true", COMPOSE)


class DocsArePortableTests(unittest.TestCase):
    def test_docs_name_no_machine_specific_paths(self) -> None:
        self.assertEqual(d.machine_specific_paths(d.REPO / "docs"), [])

    def test_a_machine_specific_path_is_found(self) -> None:
        docs = Path(self.mktemp())
        docs.mkdir()
        (docs / "a.md").write_text(
            "See `/work/shared/reference/x.md` and ~/notes, /etc/tunmesh/config.yaml.\n"
        )
        (docs / "b.md").write_text("ok\n\n(/root/.pyenv/bin/python)\n")
        self.assertEqual(d.machine_specific_paths(docs), ["a.md:1: /work/shared", "b.md:3: /root/.pyenv"])
