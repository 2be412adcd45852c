"""The emulator's webhook records: registered webhooks, queued deliveries, and the signature.
Kept apart from webhooks.py so that state.py can hold a Registry without importing the routes."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from infra.gemini_emulator.wire import rfc3339


@dataclass
class Webhook:
    id: str
    name: str | None
    uri: str
    subscribed_events: list[str]
    secret: str  # whsec_ + base64 of 32 random bytes, as the Standard Webhooks spec serializes it
    create_time: float  # wall clock

    def resource(self) -> dict[str, Any]:
        body = {"id": self.id, "uri": self.uri, "subscribed_events": list(self.subscribed_events),
                "state": "enabled", "create_time": rfc3339(self.create_time), "update_time": rfc3339(self.create_time),
                "signing_secrets": [{"truncated_secret": self.secret[:10] + "..."}]}
        if self.name is not None:
            body["name"] = self.name
        return body


@dataclass
class Delivery:
    msg_id: str  # webhook-id: the same on every attempt and on a duplicate
    event: str
    batch: str
    uri: str
    body: bytes
    secret: str | None  # None: a dynamic (webhook_config) delivery, sent unsigned (README.md)
    next_at: float  # emulator clock
    first_at: float
    bad_signature: bool = False
    status: str = "pending"  # pending | delivered | failed | dropped
    attempts: list[Any] = field(default_factory=list)  # the HTTP status, or the error's name, of each

    def record(self) -> dict[str, Any]:
        return {"webhook_id": self.msg_id, "type": self.event, "batch": self.batch, "uri": self.uri,
                "status": self.status, "attempts": list(self.attempts), "signed": self.secret is not None,
                "bad_signature": self.bad_signature}


class Registry:
    """Registered webhooks and the delivery log (guarded by the state's lock)."""

    def __init__(self) -> None:
        self.webhooks: dict[str, Webhook] = {}
        self.deliveries: list[Delivery] = []

    def clear_deliveries(self) -> None:
        self.deliveries = []


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks v1: base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), the key being
    the base64 after ``whsec_``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()
