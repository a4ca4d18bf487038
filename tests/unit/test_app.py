"""Tests for L{tunmesh.api.app}, in memory through L{treq.testing.StubTreq}."""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from tunmesh.api.app import (
    BAD_REQUEST_BODY,
    INTERNAL_ERROR_BODY,
    METHOD_NOT_ALLOWED_BODY,
    NOT_FOUND_BODY,
    ControlAPI,
)
from tunmesh.health import HealthRegistry
from tunmesh.metrics import Metrics
from tunmesh.node import NodeIdentity
from tunmesh.testing import stub_treq

NODE_ID = "0d9c6a4e-9a1f-4c7e-8f67-3f5b1f1a2b3c"
URL = "https://198.18.0.1:4567"
BASE = "https://198.18.0.1:4567"


class Flag:
    def __init__(self, value: bool) -> None:
        self.value = value

    def __call__(self) -> bool:
        return self.value


class MeshRoutes:
    """A sub-app declared relative to its mount prefix, as the mesh package does."""

    app = Klein()

    def __init__(self) -> None:
        self.seen: list[tuple[list[bytes], list[bytes]]] = []

    @app.route("/registrations/register", methods=["POST"])
    def register(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"route":"register"}'

    @app.route("/registrations/register/<node_id>", methods=["POST"])
    def renew(self, request: IRequest, node_id: str) -> bytes:
        return json.dumps({"route": "renew", "node_id": node_id}).encode()


class EchoLeaf(Resource):
    """A plain twisted.web resource recording what path it was given."""

    isLeaf = True

    def render_GET(self, request: IRequest) -> bytes:
        return json.dumps(
            {"prepath": [s.decode() for s in request.prepath], "postpath": [s.decode() for s in request.postpath]}
        ).encode()


class Response:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.getRawHeaders(name)
        return None if values is None else values[0]

    def json(self) -> Any:
        return json.loads(self.body)


class ControlAPITestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.identity = NodeIdentity(node_id=NODE_ID, advertise_url=URL, started_at=1000.0, started_monotonic=5.0)
        self.health = HealthRegistry(Clock())
        self.metrics = Metrics(NODE_ID, {"cluster": "test"}, advertise_url=URL)
        self.monitoring = True

    def api(self) -> ControlAPI:
        return ControlAPI(self.identity, self.health, self.metrics, self.monitoring, clock=Clock())

    def request(self, method: str, path: str, api: ControlAPI | None = None, **kw: Any) -> Response:
        treq = stub_treq((api or self.api()).resource())
        response = self.successResultOf(treq.request(method, BASE + path, **kw))
        body = self.successResultOf(treq.content(response))
        return Response(response.code, response.headers, body)

    def assertPlain(self, r: Response, code: int, body: bytes) -> None:
        self.assertEqual((r.code, r.body), (code, body))
        self.assertEqual(r.header(b"Content-Type"), b"text/plain; charset=utf-8")
        self.assertEqual(r.header(b"Cache-Control"), b"no-store")


class HealthRouteTests(ControlAPITestCase):
    def test_health_flips_with_a_check(self) -> None:
        tun = Flag(True)
        self.health.add_liveness("tun", tun)
        self.health.add_liveness("worker", Flag(True))
        api = self.api()
        r = self.request("GET", "/health", api)
        self.assertEqual((r.code, r.json()), (200, {"live": {"tun": True, "worker": True}}))
        self.assertEqual(r.header(b"Content-Type"), b"application/json")
        self.assertEqual(r.header(b"Cache-Control"), b"no-store")
        self.assertIsNotNone(r.header(b"Date"))
        tun.value = False
        r = self.request("GET", "/health", api)
        self.assertEqual((r.code, r.json()), (503, {"live": {"tun": False, "worker": True}}))
        tun.value = True
        self.assertEqual(self.request("GET", "/health", api).code, 200)

    def test_health_body_is_booleans_only(self) -> None:
        def broken() -> bool:
            raise RuntimeError("/etc/secret path")

        self.health.add_liveness("broken", broken)
        r = self.request("GET", "/health")
        self.assertEqual(r.code, 503)
        self.assertEqual(r.json(), {"live": {"broken": False}})
        self.assertNotIn(b"secret", r.body)
        self.flushLoggedErrors(RuntimeError)

    def test_ready_503_then_200(self) -> None:
        registered = Flag(False)
        self.health.add_readiness("registered", registered)
        self.health.add_liveness("tun", Flag(True))
        api = self.api()
        r = self.request("GET", "/ready", api)
        self.assertEqual((r.code, r.json()), (503, {"ready": {"registered": False}}))
        self.assertEqual(self.request("GET", "/health", api).code, 200)
        registered.value = True
        r = self.request("GET", "/ready", api)
        self.assertEqual((r.code, r.json()), (200, {"ready": {"registered": True}}))

    def test_no_checks_is_healthy(self) -> None:
        self.assertEqual(self.request("GET", "/health").code, 200)
        self.assertEqual(self.request("GET", "/ready").code, 200)

    def test_head_health(self) -> None:
        r = self.request("HEAD", "/health")
        self.assertEqual((r.code, r.body), (200, b""))


class MetricsRouteTests(ControlAPITestCase):
    def test_metrics_text(self) -> None:
        self.metrics.counter("dropped_packets", "Drops.", ("reason",)).labels(reason="no_route").inc()
        r = self.request("GET", "/metrics")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.header(b"Content-Type"), b"text/plain; version=0.0.4; charset=utf-8")
        self.assertEqual(r.header(b"Cache-Control"), b"no-store")
        text = r.body.decode("utf-8")
        # The node's id labels one info series, not every series (issue 8).
        self.assertEqual(text.count(f'node_id="{NODE_ID}"'), 1)
        self.assertIn(f'tunmesh_node_info{{advertise_url="{URL}",cluster="test",node_id="{NODE_ID}",node_name=""}} 1.0',
                      text)
        self.assertIn('cluster="test"', text)
        self.assertNotIn("_created", text)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        self.assertIn("process_cpu_seconds", families)
        drops = families["tunmesh_dropped_packets"].samples[0]
        self.assertEqual(drops.labels, {"cluster": "test", "reason": "no_route"})
        self.assertEqual(drops.value, 1.0)
        for name in families:
            self.assertTrue(name.startswith(("tunmesh_", "process_", "python_")), name)

    def test_name_selectors_expose_only_those_series_with_the_base_labels(self) -> None:
        drops = self.metrics.counter("dropped_packets", "Drops.", ("reason",))
        drops.labels(reason="no_route").inc()
        self.metrics.gauge("links_connected", "Links.", ("direction",)).labels(direction="out").set(3)
        r = self.request("GET", "/metrics?name[]=tunmesh_links_connected&name[]=tunmesh_dropped_packets_total")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.header(b"Content-Type"), b"text/plain; version=0.0.4; charset=utf-8")
        families = {f.name: f for f in text_string_to_metric_families(r.body.decode("utf-8"))}
        self.assertEqual(set(families), {"tunmesh_links_connected", "tunmesh_dropped_packets"})
        self.assertEqual(families["tunmesh_links_connected"].samples[0].labels, {"cluster": "test", "direction": "out"})
        self.assertEqual(families["tunmesh_links_connected"].samples[0].value, 3.0)
        # an unknown name selects nothing; the whole exposition is still there without a selector
        unknown = self.request("GET", "/metrics?name[]=nope")
        self.assertEqual((unknown.code, unknown.body), (200, b""))
        self.assertIn(b"process_cpu_seconds_total", self.request("GET", "/metrics").body)

    def test_bad_name_selectors_are_a_400(self) -> None:
        from tunmesh.metrics import MAX_SELECTED_NAMES

        too_many = "&".join(f"name[]=n{i}" for i in range(MAX_SELECTED_NAMES + 1))
        self.assertPlain(self.request("GET", f"/metrics?{too_many}"), 400, BAD_REQUEST_BODY)
        self.assertPlain(self.request("GET", "/metrics?name[]=%FF"), 400, BAD_REQUEST_BODY)
        self.assertEqual(self.request("GET", "/metrics?name[]=tunmesh_node_info").code, 200)

    def test_metrics_404_when_monitoring_disabled(self) -> None:
        self.monitoring = False
        self.assertPlain(self.request("GET", "/metrics"), 404, NOT_FOUND_BODY)

    def test_metrics_404_when_registry_disabled(self) -> None:
        self.metrics = Metrics(NODE_ID, enabled=False, process_metrics=False)
        self.assertPlain(self.request("GET", "/metrics"), 404, NOT_FOUND_BODY)


class NodeInfoTests(ControlAPITestCase):
    def test_node_info(self) -> None:
        r = self.request("GET", "/tunmesh/control/v0/node_info")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.header(b"Content-Type"), b"application/json")
        self.assertEqual(r.json(), {"id": NODE_ID, "listen_url": URL})

    def test_node_info_wins_over_mount(self) -> None:
        api = self.api()
        api.mount("/tunmesh/control/v0", EchoLeaf())
        r = self.request("GET", "/tunmesh/control/v0/node_info", api)
        self.assertEqual(r.json(), {"id": NODE_ID, "listen_url": URL})
        self.assertPlain(self.request("POST", "/tunmesh/control/v0/node_info", api), 405, METHOD_NOT_ALLOWED_BODY)
        self.assertPlain(self.request("GET", "/tunmesh/control/v0/node_info/", api), 404, NOT_FOUND_BODY)
        self.assertPlain(self.request("GET", "/tunmesh/control/v0/node_info/x", api), 404, NOT_FOUND_BODY)


class ErrorTests(ControlAPITestCase):
    def test_unknown_routes(self) -> None:
        for path in ("/", "/nope", "/health/", "/healthz", "/tunmesh", "/tunmesh/", "/tunmesh/control/v0/x"):
            self.assertPlain(self.request("GET", path), 404, NOT_FOUND_BODY)

    def test_non_utf8_path_is_constant_400_without_traceback(self) -> None:
        for path in ("/%ff", "/tunmesh/control/v0/%c3%28"):
            self.assertPlain(self.request("GET", path), 400, BAD_REQUEST_BODY)

    def test_wrong_method(self) -> None:
        for method, path in (("POST", "/health"), ("PUT", "/ready"), ("DELETE", "/metrics"), ("POST", "/metrics")):
            r = self.request(method, path)
            self.assertPlain(r, 405, METHOD_NOT_ALLOWED_BODY)
            self.assertEqual(r.header(b"Allow"), b"GET, HEAD")

    def test_unexpected_exception_is_constant_500_and_counted(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

        class Exploding(Metrics):
            def render(self, names: object = None) -> tuple[bytes, str]:
                raise KeyError("internal detail")

        self.metrics = Exploding(NODE_ID, process_metrics=False)
        api = self.api()
        for _ in range(3):
            r = self.request("GET", "/metrics", api)
            self.assertPlain(r, 500, INTERNAL_ERROR_BODY)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 3)
        value = self.metrics.collector_registry().get_sample_value(
            "tunmesh_errors_total", {"where": "api"}
        )
        self.assertEqual(value, 3.0)
        errors = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(len(errors), 3)
        self.assertEqual(errors[0]["error_type"], "KeyError")


class MountTests(ControlAPITestCase):
    def test_mounted_klein_app_sees_relative_path(self) -> None:
        api = self.api()
        api.mount("/tunmesh/control/v0", MeshRoutes().app.resource())
        r = self.request("POST", "/tunmesh/control/v0/registrations/register", api)
        self.assertEqual((r.code, r.json()), (200, {"route": "register"}))
        r = self.request("POST", "/tunmesh/control/v0/registrations/register/abc-1", api)
        self.assertEqual(r.json(), {"route": "renew", "node_id": "abc-1"})
        self.assertEqual(r.header(b"Cache-Control"), b"no-store")

    def test_mounted_resource_gets_prepath_and_postpath(self) -> None:
        api = self.api()
        api.mount("/tunmesh/auth/v0", EchoLeaf())
        r = self.request("GET", "/tunmesh/auth/v0/init_session/n1", api)
        self.assertEqual(r.json(), {"prepath": ["tunmesh", "auth", "v0"], "postpath": ["init_session", "n1"]})

    def test_longest_prefix_wins(self) -> None:
        api = self.api()
        api.mount("/tunmesh/control/v0", EchoLeaf())
        api.mount("/tunmesh/control/v0/packet", EchoLeaf())
        r = self.request("GET", "/tunmesh/control/v0/packet/rx/n1", api)
        self.assertEqual(r.json()["postpath"], ["rx", "n1"])
        r = self.request("GET", "/tunmesh/control/v0/registrations", api)
        self.assertEqual(r.json()["postpath"], ["registrations"])

    def test_segment_boundary(self) -> None:
        """/tunmesh/control/v0x is not below /tunmesh/control/v0."""
        api = self.api()
        api.mount("/tunmesh/control/v0", EchoLeaf())
        self.assertPlain(self.request("GET", "/tunmesh/control/v0x/a", api), 404, NOT_FOUND_BODY)

    def test_mounts_are_per_instance(self) -> None:
        a = self.api()
        a.mount("/tunmesh/control/v0", EchoLeaf())
        b = self.api()
        self.assertEqual(self.request("GET", "/tunmesh/control/v0/x", a).code, 200)
        self.assertPlain(self.request("GET", "/tunmesh/control/v0/x", b), 404, NOT_FOUND_BODY)

    def test_bad_prefixes(self) -> None:
        api = self.api()
        for bad in ("/health", "tunmesh/x", "/tunmesh/", "/tunmesh", "/tunmesh//x", "/tunmesh/../x",
                    "/tunmesh/control/v0/node_info", "/tunmesh/control/v0/node_info/x", "/other/x", 7):
            self.assertRaises(ValueError, api.mount, bad, EchoLeaf())

    def test_duplicate_and_non_resource(self) -> None:
        api = self.api()
        api.mount("/tunmesh/auth/v0/", EchoLeaf())
        self.assertRaises(ValueError, api.mount, "/tunmesh/auth/v0", EchoLeaf())
        self.assertRaises(TypeError, api.mount, "/tunmesh/other", object())
