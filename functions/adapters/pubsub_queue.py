"""The interactive lane's queue: one Pub/Sub message per image."""
from __future__ import annotations

import json
from collections.abc import Iterable

from google.cloud import pubsub_v1


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
