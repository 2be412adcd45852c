"""A push relay: pulls the work subscription and POSTs each message to the worker, N at a time.

The Pub/Sub emulator's push subscriptions keep at most 2 pushes in flight, whereas in the cloud
Eventarc pushes to as many worker instances as max-instances allows. The relay gives the local
stack that concurrency (benchmarks use it) while delivering exactly what the emulator pushes:
the raw ``{"message": ..., "subscription": ...}`` body, acked on 2xx and redelivered with
exponential backoff otherwise, like a subscription's retry policy. Standard library only.
"""
from __future__ import annotations

import json
import threading

from infra.local.http import http_json

_ACK_CODES = {102, 200, 201, 203, 204}  # what the emulator's push treats as an ack


class PushRelay:
    def __init__(
        self,
        *,
        pubsub_url: str,
        subscription_path: str,
        endpoint: str,
        concurrency: int,
        min_backoff: float = 1.0,
        max_backoff: float = 10.0,
        delivery_timeout: float = 600.0,
    ) -> None:
        self.pubsub_url = pubsub_url.rstrip("/")
        self.subscription_path = subscription_path
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.delivery_timeout = delivery_timeout
        self.attempts: dict[str, int] = {}
        self.delivered = 0
        self.redelivered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> PushRelay:
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"push-relay-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _call(self, verb: str, body: dict) -> dict:
        status, payload = http_json("POST", f"{self.pubsub_url}/v1/{self.subscription_path}:{verb}", body, 30)
        if status != 200:
            raise OSError(f"pubsub {verb}: HTTP {status} {payload[:200]!r}")
        return json.loads(payload or b"{}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                received = self._call("pull", {"maxMessages": 1, "returnImmediately": True})
            except OSError:
                self._stop.wait(0.5)
                continue
            messages = received.get("receivedMessages") or []
            if not messages:
                self._stop.wait(0.05)
                continue
            for entry in messages:
                self._deliver(entry)

    def _deliver(self, entry: dict) -> None:
        message = entry["message"]
        body = {"message": message, "subscription": self.subscription_path}
        try:
            status, _ = http_json("POST", self.endpoint, body, self.delivery_timeout)
        except OSError:
            status = 0  # the worker is down or restarting: redeliver later
        message_id = message.get("messageId", "")
        with self._lock:
            attempt = self.attempts.get(message_id, 0) + 1
            self.attempts[message_id] = attempt
            if attempt > 1:
                self.redelivered += 1
        try:
            if status in _ACK_CODES:
                with self._lock:
                    self.delivered += 1
                self._call("acknowledge", {"ackIds": [entry["ackId"]]})
            else:
                backoff = min(self.max_backoff, self.min_backoff * 2 ** (attempt - 1))
                self._call("modifyAckDeadline", {"ackIds": [entry["ackId"]], "ackDeadlineSeconds": int(backoff)})
        except OSError:
            pass  # the ack deadline expires and Pub/Sub redelivers: at-least-once either way
