"""Cluster tokens and the token format: every bad-token case of security-contract.md group A."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.auth import keys
from tunmesh.auth.cluster import ClusterAuthority
from tunmesh.auth.errors import REASONS, AuthError
from tunmesh.auth.keys import b64url, derive_key
from tunmesh.auth.tokens import (
    MAX_TOKEN_BYTES,
    TYP_BOOTSTRAP,
    TYP_REQUEST,
    body_hash,
    parse_authorization,
)

SECRET = "x" * 43
NOW = 1_700_000_000
PATH = "/tunmesh/control/v0/registrations/register"
BODY = b'{"id":"node-a"}'


def forge(key: bytes, header: dict[str, Any], claims: dict[str, Any], alg: str = "HS256") -> str:
    """Build a token by hand, so every field (alg included) can be wrong."""
    signing = (b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())).encode()
    if alg == "HS256":
        sig = hmac.new(key, signing, hashlib.sha256).digest()
    elif alg == "HS512":
        sig = hmac.new(key, signing, hashlib.sha512).digest()
    else:
        sig = b""
    return "Bearer " + signing.decode() + "." + b64url(sig)


def claims(**over: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "iss": "node-a",
        "aud": "node-b",
        "iat": NOW,
        "exp": NOW + 30,
        "htm": "POST",
        "htu": PATH,
        "bh": body_hash(BODY),
        "jti": "AAAAAAAAAAAAAAAAAAAAAA",
    }
    value.update(over)
    return {k: v for k, v in value.items() if v is not None}


def header(**over: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"alg": "HS256", "typ": TYP_REQUEST, "kid": "cluster"}
    value.update(over)
    return {k: v for k, v in value.items() if v is not None}


REQUEST_KEY = derive_key(SECRET, keys.CLUSTER_REQUEST)


class KeyTests(SynchronousTestCase):
    def test_hkdf_matches_rfc5869(self) -> None:
        prk = hmac.new(b"tunmesh v1", SECRET.encode(), hashlib.sha256).digest()
        okm = hmac.new(prk, b"kex\x01", hashlib.sha256).digest()
        self.assertEqual(derive_key(SECRET, "kex"), okm)

    def test_purposes_differ(self) -> None:
        derived = {derive_key(SECRET, p) for p in keys.PURPOSES}
        self.assertEqual(len(derived), len(keys.PURPOSES))
        self.assertEqual(derive_key(SECRET, "kex"), derive_key(SECRET.encode(), "kex"))

    def test_bad_inputs(self) -> None:
        self.assertRaises(ValueError, derive_key, SECRET, "other")
        self.assertRaises(ValueError, derive_key, b"", "kex")

    def test_b64url_strict(self) -> None:
        for bad in ("a=", "a+b", "abcde", "ab!c", "AB"):  # "AB" is non-canonical
            self.assertRaises(ValueError, keys.b64url_decode, bad)
        self.assertEqual(keys.b64url_decode("AA"), b"\x00")

    def test_length_prefixed_is_unambiguous(self) -> None:
        self.assertNotEqual(keys.length_prefixed("ab", "c"), keys.length_prefixed("a", "bc"))


class ErrorTests(SynchronousTestCase):
    def test_status(self) -> None:
        self.assertEqual(AuthError("rate_limited").status, 429)
        for reason in REASONS - {"rate_limited"}:
            self.assertEqual(AuthError(reason).status, 401)
        self.assertRaises(ValueError, AuthError, "because")


class ParseAuthorizationTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_authorization("Bearer a.b.c"), "a.b.c")
        self.assertEqual(parse_authorization(b"Bearer: a.b.c"), "a.b.c")
        self.assertEqual(parse_authorization("bearer  a.b.c "), "a.b.c")

    def test_missing(self) -> None:
        for value in (None, "", b"", "   "):
            self.assertEqual(self._reason(value), "missing")

    def test_malformed(self) -> None:
        for value in ("Basic a.b.c", "Bearer", "Bearer a.b c", b"Bearer \xff", "a.b.c"):
            self.assertEqual(self._reason(value), "malformed", value)

    def test_oversized(self) -> None:
        self.assertEqual(self._reason("Bearer " + "a" * (MAX_TOKEN_BYTES + 1)), "oversized")

    def _reason(self, value: Any) -> str:
        with self.assertRaises(AuthError) as ctx:
            parse_authorization(value)
        return ctx.exception.reason


class ClusterTokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.a = ClusterAuthority(SECRET, "node-a", self.clock, validity=30, leeway=60)
        self.b = ClusterAuthority(SECRET, "node-b", self.clock, validity=30, leeway=60)

    def reason(self, value: Any, method: str = "POST", path: str = PATH, body: bytes = BODY, **kw: Any) -> str:
        with self.assertRaises(AuthError) as ctx:
            self.b.verify_request_head(value, method, path, **kw).verify_body(body)
        return ctx.exception.reason

    def test_round_trip(self) -> None:
        req = self.a.sign_request("node-b", "post", PATH + "?x=1", BODY)
        token = self.b.verify_request_head(req.header_value, b"POST", PATH.encode()).verify_body(BODY)
        self.assertEqual((token.iss, token.aud, token.htm, token.htu), ("node-a", "node-b", "POST", PATH))
        self.assertEqual(token.jti, req.rid)
        self.assertEqual(token.exp - token.iat, 30)
        resp = self.b.sign_response("node-a", token, b"answer")
        verified = self.a.verify_response(resp, "node-b", req, b"answer")
        self.assertEqual(verified.rid, req.rid)

    def test_forged_valid_token_passes(self) -> None:
        token = forge(REQUEST_KEY, header(), claims())
        self.assertEqual(self.b.verify_request_head(token, "POST", PATH).verify_body(BODY).iss, "node-a")

    def test_bad_alg(self) -> None:
        self.assertEqual(self.reason(forge(REQUEST_KEY, header(alg="none"), claims(), "none")), "bad_alg")
        self.assertEqual(self.reason(forge(REQUEST_KEY, header(alg="HS512"), claims(), "HS512")), "bad_alg")
        self.assertEqual(self.reason(forge(REQUEST_KEY, header(alg="RS256"), claims())), "bad_alg")
        self.assertEqual(self.reason(forge(REQUEST_KEY, header(alg=None), claims())), "bad_alg")

    def test_unsigned_hs256(self) -> None:
        self.assertEqual(self.reason(forge(REQUEST_KEY, header(), claims(), "none")), "malformed")

    def test_wrong_key(self) -> None:
        other = derive_key("y" * 43, keys.CLUSTER_REQUEST)
        self.assertEqual(self.reason(forge(other, header(), claims())), "bad_signature")
        self.assertEqual(self.reason(forge(SECRET.encode(), header(), claims())), "bad_signature")
        response_key = derive_key(SECRET, keys.CLUSTER_RESPONSE)
        self.assertEqual(self.reason(forge(response_key, header(), claims())), "bad_signature")

    def test_wrong_claims(self) -> None:
        cases = {
            "wrong_audience": claims(aud="node-c"),
            "wrong_issuer": claims(iss="bad id with spaces"),
            "lifetime_too_long": claims(exp=NOW + 61),
            "malformed": claims(exp=NOW),
        }
        for reason, c in cases.items():
            self.assertEqual(self.reason(forge(REQUEST_KEY, header(), c)), reason, c)
        self.assertEqual(self.reason(forge(REQUEST_KEY, header(), claims(iss=7))), "wrong_issuer")

    def test_missing_or_mistyped_claims(self) -> None:
        for c in (
            claims(bh=None),
            claims(bh="short"),
            claims(jti=None),
            claims(jti=12345),
            claims(iat=None),
            claims(exp="soon"),
            claims(iat=True),
            claims(htm=None),
            claims(htu=None),
            claims(aud=["node-b"]),
            claims(cnf="x"),
        ):
            self.assertEqual(self.reason(forge(REQUEST_KEY, header(), c)), "malformed", c)

    def test_wrong_type(self) -> None:
        for h in (header(typ="JWT"), header(typ=None), header(typ="tm-resp+jwt"), header(typ="tm-link+jwt")):
            self.assertEqual(self.reason(forge(REQUEST_KEY, h, claims())), "wrong_type", h)

    def test_bad_header(self) -> None:
        self.assertEqual(self.reason(forge(REQUEST_KEY, header(jku="https://evil/"), claims())), "malformed")
        self.assertEqual(self.reason(forge(REQUEST_KEY, header(kid=None), claims())), "malformed")
        self.assertEqual(self.reason(forge(REQUEST_KEY, header(kid="a b"), claims())), "malformed")

    def test_malformed_encoding(self) -> None:
        good = forge(REQUEST_KEY, header(), claims())[len("Bearer ") :]
        h, p, s = good.split(".")
        not_object = b64url(b"[1,2]")
        not_json = b64url(b"{nope")
        for token in (f"{h}.{p}", f"{h}.{p}.{s}.x", f"{h}!.{p}.{s}", f"{h}.{p}=.{s}",
                      f"{not_json}.{p}.{s}", f"{h}.{not_object}.{s}", f"{h}.{not_json}.{s}", "..."):
            self.assertEqual(self.reason("Bearer " + token), "malformed", token)
        self.assertEqual(self.reason("Bearer " + f"{h}.{p}.{s[:-2]}AA"), "bad_signature")

    def test_expired_is_clock_skew_with_the_skew(self) -> None:
        """A token past ``exp + leeway`` says the sender's clock is behind ours (issue 13)."""
        token = self.a.sign_request("node-b", "POST", PATH, BODY).header_value
        self.clock.advance(30 + 59)
        self.b.verify_request_head(token, "POST", PATH)  # within leeway
        self.clock.advance(1)
        self.assertEqual(self.reason(token), "clock_skew")
        with self.assertRaises(AuthError) as ctx:
            self.b.verify_request_head(token, "POST", PATH)
        self.assertEqual(ctx.exception.skew, -90)

    def test_future_iat(self) -> None:
        ok = forge(REQUEST_KEY, header(), claims(iat=NOW + 60, exp=NOW + 90))
        self.b.verify_request_head(ok, "POST", PATH).verify_body(BODY)
        bad = forge(REQUEST_KEY, header(), claims(iat=NOW + 61, exp=NOW + 91, jti="B" * 22))
        self.assertEqual(self.reason(bad), "clock_skew")
        with self.assertRaises(AuthError) as ctx:
            self.b.verify_request_head(bad, "POST", PATH)
        self.assertEqual(ctx.exception.skew, 61)
        nbf = forge(REQUEST_KEY, header(), claims(nbf=NOW + 120, jti="C" * 22))
        self.assertEqual(self.reason(nbf), "clock_skew")

    def test_float_times_accepted(self) -> None:
        token = forge(REQUEST_KEY, header(), claims(iat=NOW - 0.5, exp=NOW + 29.5))
        self.b.verify_request_head(token, "POST", PATH).verify_body(BODY)

    def test_replayed_jti(self) -> None:
        token = self.a.sign_request("node-b", "POST", PATH, BODY).header_value
        self.b.verify_request_head(token, "POST", PATH).verify_body(BODY)
        self.assertEqual(self.reason(token), "replay")
        # Two heads pass before either body arrives: only the first body commits.
        token = self.a.sign_request("node-b", "POST", PATH, BODY).header_value
        p1 = self.b.verify_request_head(token, "POST", PATH)
        p2 = self.b.verify_request_head(token, "POST", PATH)
        p1.verify_body(BODY)
        self.assertRaises(AuthError, p2.verify_body, BODY)
        # Still refused until exp + leeway has passed, then it is expired anyway.
        self.clock.advance(89)
        self.assertEqual(self.reason(token), "replay")
        self.clock.advance(1)
        self.assertEqual(self.reason(token), "clock_skew")

    def test_tampered_body_does_not_burn_jti(self) -> None:
        token = self.a.sign_request("node-b", "POST", PATH, BODY).header_value
        self.assertEqual(self.reason(token, body=BODY + b" "), "body_mismatch")
        self.b.verify_request_head(token, "POST", PATH).verify_body(BODY)

    def test_other_path_or_method(self) -> None:
        token = self.a.sign_request("node-b", "POST", PATH, BODY).header_value
        self.assertEqual(self.reason(token, path="/tunmesh/control/v0/registrations/sync"), "wrong_path")
        self.assertEqual(self.reason(token, method="PUT"), "wrong_method")

    def test_missing_and_oversized(self) -> None:
        self.assertEqual(self.reason(None), "missing")
        big = forge(REQUEST_KEY, header(), claims(pad="x" * MAX_TOKEN_BYTES))
        self.assertEqual(self.reason(big), "oversized")

    def test_response_replayed_as_request(self) -> None:
        req = self.a.sign_request("node-b", "POST", PATH, BODY)
        token = self.b.verify_request_head(req.header_value, "POST", PATH).verify_body(BODY)
        # b's response to a, sent back to a as if it were a request from b
        resp = self.b.sign_response("node-a", token, BODY)
        with self.assertRaises(AuthError) as ctx:
            self.a.verify_request_head(resp, "POST", PATH)
        self.assertEqual(ctx.exception.reason, "wrong_type")
        # ... and relabelled as a request: the response key does not verify requests.
        response_key = derive_key(SECRET, keys.CLUSTER_RESPONSE)
        relabelled = forge(response_key, header(), claims(iss="node-b", aud="node-a"))
        with self.assertRaises(AuthError) as ctx:
            self.a.verify_request_head(relabelled, "POST", PATH)
        self.assertEqual(ctx.exception.reason, "bad_signature")

    def test_session_token_on_cluster_verifier(self) -> None:
        token = forge(REQUEST_KEY, header(kid="AAAAAAAAAAAAAAAAAAAAAA"), claims(jti=None, ctr=0))
        self.assertEqual(self.reason(token), "wrong_type")

    def test_bootstrap(self) -> None:
        req = self.a.sign_request("ignored", "POST", PATH, BODY, typ=TYP_BOOTSTRAP)
        self.assertEqual(self.reason(req.header_value), "wrong_type")  # not accepted by default
        token = self.b.verify_request_head(req.header_value, "POST", PATH, accept_bootstrap=True).verify_body(BODY)
        self.assertEqual((token.typ, token.aud), (TYP_BOOTSTRAP, "bootstrap"))
        # the responder signs its real id; the client does not know it in advance
        resp = self.b.sign_response("node-a", token, b'{"id":"node-b"}')
        verified = self.a.verify_response(resp, None, req, b'{"id":"node-b"}')
        self.assertEqual(verified.iss, "node-b")
        # a bootstrap token must say aud=bootstrap, and one signed with the request key fails
        bootstrap_key = derive_key(SECRET, keys.CLUSTER_BOOTSTRAP)
        wrong_aud = forge(bootstrap_key, header(typ=TYP_BOOTSTRAP), claims())
        self.assertEqual(self.reason(wrong_aud, accept_bootstrap=True), "wrong_audience")
        wrong_key = forge(REQUEST_KEY, header(typ=TYP_BOOTSTRAP), claims(aud="bootstrap"))
        self.assertEqual(self.reason(wrong_key, accept_bootstrap=True), "bad_signature")
        # a normal request addressed to "bootstrap" is refused
        normal = forge(REQUEST_KEY, header(), claims(aud="bootstrap"))
        self.assertEqual(self.reason(normal, accept_bootstrap=True), "wrong_audience")

    def test_channel_binding(self) -> None:
        mine = keys.cert_thumbprint(b"server cert of b")
        other = keys.cert_thumbprint(b"a relay's cert")
        good = self.a.sign_request("node-b", "POST", PATH, BODY, cnf=mine).header_value
        self.b.verify_request_head(good, "POST", PATH, cnf=mine).verify_body(BODY)
        relayed = self.a.sign_request("node-b", "POST", PATH, BODY, cnf=other).header_value
        self.assertEqual(self.reason(relayed, cnf=mine), "channel_binding")
        unbound = self.a.sign_request("node-b", "POST", PATH, BODY).header_value
        self.assertEqual(self.reason(unbound, cnf=mine), "channel_binding")

    def test_response_checks(self) -> None:
        req = self.a.sign_request("node-b", "POST", PATH, BODY)
        token = self.b.verify_request_head(req.header_value, "POST", PATH).verify_body(BODY)
        other_req = self.a.sign_request("node-b", "POST", PATH, BODY)
        resp = self.b.sign_response("node-a", token, b"ok", cnf=keys.cert_thumbprint(b"b"))

        def reason(*args: Any, **kw: Any) -> str:
            with self.assertRaises(AuthError) as ctx:
                self.a.verify_response(*args, **kw)
            return ctx.exception.reason

        self.assertEqual(reason(resp, "node-b", other_req, b"ok"), "wrong_request")
        self.assertEqual(reason(resp, "node-c", req, b"ok"), "wrong_issuer")
        self.assertEqual(reason(resp, "node-b", req, b"ko"), "body_mismatch")
        self.assertEqual(reason(resp, "node-b", req, b"ok", cnf=keys.cert_thumbprint(b"x")), "channel_binding")
        self.assertEqual(reason(req.header_value, "node-b", req, BODY), "wrong_type")  # request as response
        self.assertEqual(self.a.verify_response(resp, "node-b", req, b"ok", cnf=keys.cert_thumbprint(b"b")).rid,
                         req.rid)
        # a response meant for another node
        c = ClusterAuthority(SECRET, "node-c", self.clock)
        with self.assertRaises(AuthError) as ctx:
            c.verify_response(resp, "node-b", req, b"ok")
        self.assertEqual(ctx.exception.reason, "wrong_audience")

    def test_jti_cache_full_is_429(self) -> None:
        b = ClusterAuthority(SECRET, "node-b", self.clock, jti_entries=2)
        for _ in range(2):
            b.verify_request_head(self.a.sign_request("node-b", "POST", PATH, BODY).header_value,
                                  "POST", PATH).verify_body(BODY)
        pending = b.verify_request_head(self.a.sign_request("node-b", "POST", PATH, BODY).header_value,
                                        "POST", PATH)
        with self.assertRaises(AuthError) as ctx:
            pending.verify_body(BODY)
        self.assertEqual(ctx.exception.status, 429)

    def test_timing_limits(self) -> None:
        self.assertRaises(ValueError, ClusterAuthority, SECRET, "n", self.clock, leeway=301)
        self.assertRaises(ValueError, ClusterAuthority, SECRET, "n", self.clock, validity=0)
        capped = ClusterAuthority(SECRET, "node-a", self.clock, validity=600)
        token = self.b.verify_request_head(capped.sign_request("node-b", "POST", PATH, BODY).header_value,
                                           "POST", PATH).verify_body(BODY)
        self.assertEqual(token.exp - token.iat, 60)

    def test_secret_never_in_tokens_or_errors(self) -> None:
        req = self.a.sign_request("node-b", "POST", PATH, BODY)
        self.assertNotIn(SECRET, req.header_value)
        err = AuthError("bad_signature")
        self.assertEqual(str(err), "bad_signature")
