"""The batch-nudges topic: one small message per intent that Gemini's webhook says has ended,
or per accepted job to expand (core/expanding.py). Its push subscription calls
scheduled_poller, which reconciles that one intent or expands that one job for a while.

The expansion rides on this topic rather than one of its own: it wants the same thing (a push
to the poller function, at-least-once, retried with back-off on a 503), so a second topic,
subscription and IAM binding in Terraform and the local stack would buy nothing."""
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
        self._publish({"intent_id": intent_id})

    def expand(self, job_id: str) -> None:
        self._publish({"expand_job_id": job_id})

    def _publish(self, message: dict) -> None:
        data = json.dumps(message).encode()
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
    return _checked(intent_id)


def decode_expand(data: bytes) -> str | None:
    """The job id of an expansion nudge; None for another kind of nudge; ValueError when it
    names no job."""
    try:
        message = json.loads(data)
        job_id = message.get("expand_job_id")
    except (ValueError, AttributeError):
        raise ValueError("a nudge is a JSON object") from None
    if job_id is None:
        return None
    if not isinstance(job_id, str) or not job_id.isascii() or not job_id.isalnum() or len(job_id) > 64:
        raise ValueError("an expansion nudge names one job id")
    return job_id


def _checked(intent_id: object) -> str:
    if not isinstance(intent_id, str) or not intent_id or "/" in intent_id:
        raise ValueError("a nudge names one intent id")
    return intent_id
