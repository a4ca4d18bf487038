"""Connection failures read the same for control requests and packet links (``tunmesh.failures``)."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived

from tunmesh.admin.hints import link_hint
from tunmesh.dataplane.link import connect_error
from tunmesh.failures import describe_failure


def failure(exc: BaseException) -> Failure:
    try:
        raise exc
    except BaseException:
        return Failure()


class DescribeFailureTests(SynchronousTestCase):
    def test_link_and_request_say_the_same(self) -> None:
        for exc in (net_error.ConnectionRefusedError(), defer.TimeoutError(), net_error.TCPTimedOutError()):
            self.assertEqual(connect_error(failure(exc)), describe_failure(failure(exc))[1])
        self.assertIn("connection refused", connect_error(failure(net_error.ConnectionRefusedError())))
        self.assertIn("timed out", connect_error(failure(defer.TimeoutError())))

    def test_tls_error_inside_twisteds_wrapper(self) -> None:
        ssl_error = SSL.Error([("SSL routines", "", "sslv3 alert bad certificate")])
        wrapped = ResponseNeverReceived([failure(ssl_error)])
        reason, detail = describe_failure(failure(wrapped))
        self.assertEqual(reason, "tls")
        self.assertIn("the peer refused our certificate", detail)
        # The hint for such a link is about TLS, not "nothing listens there" (its text says "refused").
        self.assertIn("certificate", link_hint(connect_error(failure(ssl_error))).lower())
        self.assertNotIn("nothing listens", link_hint(connect_error(failure(ssl_error))))
