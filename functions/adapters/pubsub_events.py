"""The events topic: one Pub/Sub message per job.completed event."""
from __future__ import annotations

from google.api_core import exceptions as gexc
import google.cloud.pubsub_v1 as pubsub_v1

from core.errors import DeliveryFailed


class PubSubEventPublisher:
    def __init__(self, publisher: pubsub_v1.PublisherClient, topic_path: str, timeout: float = 30.0) -> None:
        self.publisher = publisher
        self.topic_path = topic_path
        self.timeout = timeout

    def publish_event(self, data: bytes, attributes: dict[str, str]) -> None:
        try:
            self.publisher.publish(self.topic_path, data, **attributes).result(timeout=self.timeout)
        except (gexc.GoogleAPIError, TimeoutError) as e:  # concurrent.futures.TimeoutError is TimeoutError
            raise DeliveryFailed(f"{type(e).__name__}: {e}"[:300]) from None
