"""The composition root: SDK clients and adapters, built lazily and once per instance.

Nothing is built at import time: the SDKs read the emulator variables when a client is
constructed, and an instance of one function never pays for another function's clients.
"""
from __future__ import annotations

import functools
import os
import socket
import uuid

from config import Settings, get_settings
from core.clock import SystemClock
from core.ratelimit import RateLimit, SlotRateLimiter


def settings() -> Settings:
    return get_settings()


@functools.cache
def clock() -> SystemClock:
    return SystemClock()


@functools.cache
def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@functools.cache
def firestore_client():
    from google.cloud import firestore

    return firestore.Client(project=settings().google_cloud_project)


@functools.cache
def job_store():
    from adapters.firestore_store import FirestoreJobStore

    return FirestoreJobStore(firestore_client())


@functools.cache
def work_queue():
    from google.cloud import pubsub_v1

    from adapters.pubsub_queue import PubSubWorkQueue

    publisher = pubsub_v1.PublisherClient()
    s = settings()
    return PubSubWorkQueue(publisher, publisher.topic_path(s.google_cloud_project, s.work_topic))


@functools.cache
def image_sink():
    from google.cloud import storage

    from adapters.gcs_sink import GcsImageSink

    s = settings()
    return GcsImageSink(storage.Client(project=s.google_cloud_project), s.images_bucket)


@functools.cache
def image_generator():
    from google import genai
    from google.genai import types

    from adapters.gemini_generator import GeminiImageGenerator

    s = settings()
    # Base URL and key come from GOOGLE_GEMINI_BASE_URL / GEMINI_API_KEY. Retries are ours
    # (shared limiter + Pub/Sub redelivery), so the SDK's own retries stay off.
    client = genai.Client(
        http_options=types.HttpOptions(timeout=int(s.gemini_timeout_seconds * 1000))
    )
    return GeminiImageGenerator(client, s.gemini_model)


def rate_limit(s: Settings) -> RateLimit:
    return RateLimit(
        requests_per_window=s.rate_limit_requests or None,
        images_per_window=s.rate_limit_images or None,
        window_seconds=s.rate_window_seconds,
        concurrency=s.rate_concurrency or None,
        safety=s.rate_safety,
    )


@functools.cache
def rate_limiter() -> SlotRateLimiter:
    from adapters.firestore_store import FirestoreSlotStore

    s = settings()
    limiter_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in s.gemini_model)
    return SlotRateLimiter(
        rate_limit(s),
        FirestoreSlotStore(firestore_client(), limiter_id),
        clock(),
        lease_ttl=s.lease_seconds,
    )
