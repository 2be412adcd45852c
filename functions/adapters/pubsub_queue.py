"""The interactive lane's queue: one Pub/Sub message per image."""
from __future__ import annotations

import json
from collections.abc import Iterable

from google.api_core import exceptions as gexc
import google.cloud.pubsub_v1 as pubsub_v1


class PubSubWorkQueue:
    def __init__(self, publisher: pubsub_v1.PublisherClient, topic_path: str) -> None:
        self.publisher = publisher
        self.topic_path = topic_path

    def publish_items(self, job_id: str, keys: Iterable[str]) -> None:
        futures = [
            self.publisher.publish(
                self.topic_path,
                json.dumps({"job_id": job_id, "item_key": key}).encode(),
                job_id=job_id,
                item_key=key,
            )
            for key in keys
        ]
        # Wait for every publish: a job answered 202 must have all of its messages accepted.
        for future in futures:
            future.result(timeout=60)


class PubSubDeadLetters:
    """Work messages Pub/Sub gave up on, pulled from the dead-letter topic's subscription."""

    def __init__(self, subscriber: pubsub_v1.SubscriberClient, subscription_path: str) -> None:
        self.subscriber = subscriber
        self.subscription_path = subscription_path

    def pull(self, max_messages: int) -> list[tuple[str, bytes, dict[str, str]]]:
        """(ack_id, data, attributes) of up to max_messages; [] when none are waiting."""
        try:
            # return_immediately: a poller tick must not wait for dead letters that may never
            # come (it is deprecated because it can return nothing while messages exist; the
            # next tick picks those up).
            response = self.subscriber.pull(
                request={"subscription": self.subscription_path, "max_messages": max_messages,
                         "return_immediately": True},
                timeout=5, retry=None,
            )
        except gexc.DeadlineExceeded:  # nothing arrived while the pull waited
            return []
        return [(m.ack_id, m.message.data, dict(m.message.attributes)) for m in response.received_messages]

    def ack(self, ack_ids: list[str]) -> None:
        if ack_ids:
            self.subscriber.acknowledge(request={"subscription": self.subscription_path, "ack_ids": ack_ids})


def decode_work_message(data: bytes) -> tuple[str, str]:
    """The message body as the worker receives it; ValueError when it is not ours."""
    try:
        body = json.loads(data)
        job_id, key = body["job_id"], body["item_key"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a work message: {e}") from None
    if not isinstance(job_id, str) or not isinstance(key, str):
        raise ValueError("job_id and item_key must be strings")
    return job_id, key
