"""Tests for L{tunmesh.node}."""

from __future__ import annotations

import uuid

import attr
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.node import NodeIdentity

NODE_ID = "0d9c6a4e-9a1f-4c7e-8f67-3f5b1f1a2b3c"


class NodeIdentityTests(SynchronousTestCase):
    def test_generate(self) -> None:
        clock = Clock()
        clock.advance(42)
        fixed = uuid.UUID(NODE_ID)
        ident = NodeIdentity.generate(
            "https://198.18.0.1:4567", wall=lambda: 1700000000.5, monotonic=clock.seconds, uuid4=lambda: fixed
        )
        self.assertEqual(
            ident,
            NodeIdentity(
                node_id=NODE_ID,
                advertise_url="https://198.18.0.1:4567",
                started_at=1700000000.5,
                started_monotonic=42.0,
            ),
        )
        clock.advance(8)
        self.assertEqual(ident.uptime(clock.seconds), 8.0)

    def test_generate_is_random_uuid4(self) -> None:
        a = NodeIdentity.generate("https://a")
        b = NodeIdentity.generate("https://a")
        self.assertNotEqual(a.node_id, b.node_id)
        self.assertEqual(uuid.UUID(a.node_id).version, 4)

    def test_frozen(self) -> None:
        ident = NodeIdentity.generate("https://a")
        self.assertRaises(attr.exceptions.FrozenInstanceError, setattr, ident, "node_id", NODE_ID)

    def test_bad_node_ids(self) -> None:
        for bad in ("", "not-a-uuid", NODE_ID.upper(), "{" + NODE_ID + "}", NODE_ID.replace("-", "")):
            self.assertRaises(ValueError, NodeIdentity, node_id=bad, advertise_url="https://a",
                              started_at=0, started_monotonic=0)
        self.assertRaises(TypeError, NodeIdentity, node_id=uuid.UUID(NODE_ID), advertise_url="https://a",
                          started_at=0, started_monotonic=0)

    def test_bad_advertise_url(self) -> None:
        for bad in ("", None, b"https://a"):
            self.assertRaises(ValueError, NodeIdentity, node_id=NODE_ID, advertise_url=bad,
                              started_at=0, started_monotonic=0)
