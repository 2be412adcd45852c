"""The batch-nudges topic: one small message per intent that Gemini's webhook says has ended.
Its push subscription calls scheduled_poller, which reconciles that one intent."""
from __future__ import annotations

import json

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions as gexc

from core.errors import DeliveryFailed


class PubSubBatchNudges:
    def __init__(self, publisher: pubsub_v1.PublisherClient, topic_path: str, timeout: float = 10.0) -> None:
        self.publisher = publisher
        self.topic_path = topic_path
        self.timeout = timeout

    def nudge(self, intent_id: str) -> None:
        data = json.dumps({"intent_id": intent_id}).encode()
        try:
            self.publisher.publish(self.topic_path, data).result(timeout=self.timeout)
        except (gexc.GoogleAPIError, TimeoutError) as e:  # concurrent.futures.TimeoutError is TimeoutError
            raise DeliveryFailed(f"{type(e).__name__}: {e}"[:300]) from None


def decode_nudge(data: bytes) -> str:
    """The intent id of a nudge's data; ValueError when it is not one."""
    try:
        intent_id = json.loads(data).get("intent_id")
    except (ValueError, AttributeError):
        raise ValueError("a nudge is a JSON object") from None
    if not isinstance(intent_id, str) or not intent_id or "/" in intent_id:
        raise ValueError("a nudge names one intent id")
    return intent_id
