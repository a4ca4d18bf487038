"""The fakes of :mod:`tunmesh.testing` provide the contracts of :mod:`tunmesh.interfaces`, like the real
classes they stand in for, so a test on a fake is a test of what production wires.

Two checks, as Twisted checks its fakes with ``verifyClass``: the annotated assignments below are checked by
mypy (``tox -e typing`` runs it over ``tests/``), and at run time every method a protocol declares is
compared, parameter by parameter, across protocol, fake and real class.
"""

from __future__ import annotations

import inspect

from prometheus_client import Counter, Gauge, Histogram
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from tunmesh.auth.sessions import SessionStore
from tunmesh.clocks import WallClock
from tunmesh.dataplane.plane import DataPlane
from tunmesh.interfaces import (
    CounterLike,
    GaugeLike,
    HistogramLike,
    MetricsLike,
    PacketDevice,
    PeerObserver,
    RateLimitedLogLike,
    SecondsClock,
    SessionsLike,
    TreqLike,
)
from tunmesh.logutil import RateLimitedLog
from tunmesh.metrics import Metrics
from tunmesh.metrics.peers import PeerInfo
from tunmesh.testing import (
    FakeCollector,
    FakeMetrics,
    FakeNetwork,
    FakeRateLimitedLog,
    FakeTun,
    RecordingObserver,
    SteppedWall,
)
from tunmesh.tun.device import TunDevice


def _methods(protocol: type) -> list[str]:
    """The methods a protocol declares (its own and its bases', not ``object``'s or ``Protocol``'s)."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass is object or klass.__module__ == "typing":
            continue
        names.update(n for n, v in vars(klass).items() if callable(v) and not n.startswith("_"))
    return sorted(names)


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _parameters(owner: object, name: str) -> list[inspect.Parameter]:
    """The parameters of ``owner.name`` without ``self`` (``owner`` a class, or an instance whose methods
    are built at run time, like ``StubTreq``'s)."""
    parameters = list(inspect.signature(getattr(owner, name)).parameters.values())
    return parameters[1:] if isinstance(owner, type) else parameters


def mismatches(protocol: type, owner: object) -> list[str]:
    """How ``owner``'s methods differ from what ``protocol`` declares (empty: it provides the contract).

    Every declared parameter is there in the same place, with the same name and kind, and required only
    where the protocol requires it; parameters beyond the declared ones are optional (prometheus's
    ``exemplar=``); declared ``*args``/``**kwargs`` are accepted by the owner too.
    """
    problems = []
    for name in _methods(protocol):
        where = f"{getattr(owner, '__name__', type(owner).__name__)}.{name}"
        if not callable(getattr(owner, name, None)):
            problems.append(f"{where} is missing")
            continue
        declared = _parameters(protocol, name)
        given = _parameters(owner, name)
        fixed = [p for p in declared if p.kind not in _VARIADIC]
        offered = [p for p in given if p.kind not in _VARIADIC]
        if [(p.name, p.kind) for p in offered[: len(fixed)]] != [(p.name, p.kind) for p in fixed]:
            problems.append(f"{where}{inspect.signature(getattr(owner, name))} has other parameters")
            continue
        for mine, theirs in zip(offered, fixed, strict=False):
            if mine.default is inspect.Parameter.empty and theirs.default is not inspect.Parameter.empty:
                problems.append(f"{where}: {mine.name} is required, the protocol's is optional")
        problems.extend(
            f"{where}: {p.name} is required, the protocol has no such parameter"
            for p in offered[len(fixed) :]
            if p.default is inspect.Parameter.empty
        )
        kinds = {p.kind for p in given}
        for p in declared:
            if p.kind is inspect.Parameter.VAR_POSITIONAL and p.kind not in kinds:
                problems.append(f"{where} takes no *{p.name}")
            if p.kind is inspect.Parameter.VAR_KEYWORD and not kinds & {p.kind, inspect.Parameter.KEYWORD_ONLY}:
                problems.append(f"{where} takes no keyword arguments (**{p.name})")
    return problems


def _contracts_provided(
    tun: TunDevice,
    fake_tun: FakeTun,
    metrics: Metrics,
    fake_metrics: FakeMetrics,
    log: RateLimitedLog,
    fake_log: FakeRateLimitedLog,
    sessions: SessionStore,
    plane: DataPlane,
    peer_info: PeerInfo,
    recorder: RecordingObserver,
    network: FakeNetwork,
    wall: WallClock,
    stepped: SteppedWall,
) -> tuple[object, ...]:
    """Each real class and each fake is its contract, attributes included (which the run-time comparison
    leaves out). Never called: mypy checks it (``tox -e typing`` runs over ``tests/``)."""
    devices: list[PacketDevice] = [tun, fake_tun]
    registries: list[MetricsLike] = [metrics, fake_metrics]
    logs: list[RateLimitedLogLike] = [log, fake_log]
    stores: list[SessionsLike] = [sessions]
    observers: list[PeerObserver] = [plane, peer_info, recorder]
    clients: list[TreqLike] = [network]
    clocks: list[SecondsClock] = [wall, stepped, Clock()]
    return (*devices, *registries, *logs, *stores, *observers, *clients, *clocks)


class ContractTestsMixin:
    """For one contract: its protocol, the fake that stands in for it, and the real classes."""

    protocol: type
    fake: type
    real: tuple[object, ...]

    def test_the_fake_provides_the_contract(self) -> None:
        assert isinstance(self, SynchronousTestCase)
        self.assertEqual(mismatches(self.protocol, self.fake), [])

    def test_the_real_classes_provide_the_contract(self) -> None:
        assert isinstance(self, SynchronousTestCase)
        for real in self.real:
            self.assertEqual(mismatches(self.protocol, real), [])


class ContractCheckTests(SynchronousTestCase):
    """The check itself notices a fake that drifted."""

    def test_a_renamed_parameter_is_noticed(self) -> None:
        class Drifted:
            def peer_up(self, peer: str, url: str, cidrs: object) -> None: ...

            def peer_down(self, peer_id: str) -> None: ...

        self.assertEqual(len(mismatches(PeerObserver, Drifted)), 1)

    def test_a_missing_method_is_noticed(self) -> None:
        class Partial:
            def peer_up(self, peer_id: str, url: str, cidrs: object) -> None: ...

        self.assertEqual(mismatches(PeerObserver, Partial), ["Partial.peer_down is missing"])

    def test_a_new_required_parameter_is_noticed(self) -> None:
        class Demanding:
            def seconds(self, precise: bool) -> float:
                return 0.0

        self.assertEqual(len(mismatches(SecondsClock, Demanding)), 1)

    def test_extra_optional_parameters_are_allowed(self) -> None:
        self.assertEqual(mismatches(CounterLike, Counter), [])


class PacketDeviceTests(ContractTestsMixin, SynchronousTestCase):
    protocol = PacketDevice
    fake = FakeTun
    real = (TunDevice,)

    def test_a_fake_tun_is_a_packet_device(self) -> None:
        tun: PacketDevice = FakeTun()
        self.addCleanup(tun.close)
        self.assertIsInstance(tun, PacketDevice)


class MetricsTests(ContractTestsMixin, SynchronousTestCase):
    protocol = MetricsLike
    fake = FakeMetrics
    real = (Metrics,)

    def test_collectors_have_what_the_node_calls(self) -> None:
        for metrics in (FakeMetrics(), Metrics("node", process_metrics=False)):
            registry: MetricsLike = metrics
            registry.counter("c_total", "C.", ["peer"]).labels("p").inc()
            registry.counter("c_total", "C.", ["peer"]).remove("p")
            gauge = registry.gauge("g", "G.")
            gauge.inc()
            gauge.dec()
            gauge.set(2)
            gauge.set_function(lambda: 3.0)
            registry.histogram("h_seconds", "H.", ["kind"]).labels(kind="k").observe(0.5)

    def test_the_fake_reads_back_what_was_counted(self) -> None:
        metrics = FakeMetrics()
        metrics.counter("dropped_packets_total", "D.", ["reason"]).labels(reason="no_route").inc(3)
        self.assertEqual(metrics.value("dropped_packets_total", "no_route"), 3)
        self.assertEqual(metrics.drops(), {"no_route": 3})


class RateLimitedLogTests(ContractTestsMixin, SynchronousTestCase):
    protocol = RateLimitedLogLike
    fake = FakeRateLimitedLog
    real = (RateLimitedLog,)

    def test_both_say_whether_a_line_was_written(self) -> None:
        logs: list[RateLimitedLogLike] = [FakeRateLimitedLog(), RateLimitedLog(Logger(), Clock(), burst=1)]
        for log in logs:
            self.assertIs(log.emit("key", LogLevel.debug, "dropped {count}", count=1), True)


class PeerObserverTests(ContractTestsMixin, SynchronousTestCase):
    protocol = PeerObserver
    fake = RecordingObserver
    real = (DataPlane, PeerInfo)

    def test_the_recorder_keeps_the_routes(self) -> None:
        observer: PeerObserver = RecordingObserver()
        observer.peer_up("p", "https://p.test:4567", ())
        observer.peer_down("p")
        assert isinstance(observer, RecordingObserver)
        self.assertEqual(observer.events, [("up", "p"), ("down", "p")])
        self.assertEqual(observer.routes, {})


class HTTPClientTests(ContractTestsMixin, SynchronousTestCase):
    protocol = TreqLike
    fake = FakeNetwork
    # StubTreq builds its methods at run time (treq's HTTPClient's, and treq.collect): an instance.
    real = (StubTreq(Resource()),)

    def test_treq_sends_with_the_declared_parameters(self) -> None:
        self.assertEqual(
            [p.name for p in _parameters(HTTPClient, "request")[:2]],
            [p.name for p in _parameters(TreqLike, "request")[:2]],
        )


class CollectorTests(SynchronousTestCase):
    """``FakeMetrics``' collectors are each kind of prometheus collector at once."""

    def test_counter(self) -> None:
        self.assertEqual(mismatches(CounterLike, FakeCollector) + mismatches(CounterLike, Counter), [])

    def test_gauge(self) -> None:
        self.assertEqual(mismatches(GaugeLike, FakeCollector) + mismatches(GaugeLike, Gauge), [])

    def test_histogram(self) -> None:
        self.assertEqual(mismatches(HistogramLike, FakeCollector) + mismatches(HistogramLike, Histogram), [])


class SecondsClockTests(ContractTestsMixin, SynchronousTestCase):
    protocol = SecondsClock
    fake = SteppedWall
    real = (WallClock, Clock)

    def test_a_stepped_wall_is_the_clock_plus_its_steps(self) -> None:
        clock = Clock()
        wall = SteppedWall(clock)
        seconds: SecondsClock = wall
        clock.advance(10)
        wall.step(-3)
        self.assertEqual(seconds.seconds(), 7)


class SessionStoreTests(SynchronousTestCase):
    """No fake: the data plane's tests use the real ``SessionStore``; it stays a ``SessionsLike``."""

    def test_the_store_is_what_the_data_plane_uses(self) -> None:
        self.assertEqual(mismatches(SessionsLike, SessionStore), [])
        store: SessionsLike = SessionStore("node", Clock())
        self.assertIsNone(store.outbound("peer"))
