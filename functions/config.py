"""All runtime configuration, read from the environment once per instance.

The emulator variables (FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST,
GOOGLE_GEMINI_BASE_URL) and GEMINI_API_KEY are deliberately absent: the SDKs read them.
"""
from __future__ import annotations

import functools

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.tenants import Caller, parse_api_keys
from core.webhooks import decode_secret


class Settings(BaseSettings):
    # hide_input_in_errors: a malformed WEBHOOK_SECRET must not be echoed into the logs.
    model_config = SettingsConfigDict(extra="ignore", hide_input_in_errors=True)
    _callers: dict[str, Caller] = PrivateAttr(default_factory=dict)

    google_cloud_project: str = Field(description="Project of Firestore, Pub/Sub and GCS")
    images_bucket: str = Field(description="Bucket that receives the generated images")
    work_topic: str = Field("imagefleet-work", description="Topic of the interactive lane")

    api_keys: SecretStr | None = Field(
        None,
        description="comma-separated X-API-Key entries: key, tenant=key or admin:tenant=key "
        "(core/tenants.py); unset = no key check and one tenant (the cloud's IAM invoker check still applies)",
    )

    gemini_model: str = "gemini-2.5-flash-image"
    gemini_timeout_seconds: float = Field(60.0, gt=0)

    # Routing and input limits
    interactive_threshold: int = Field(10, ge=1)
    batch_lane_enabled: bool = True
    max_items_per_job: int = Field(10_000, ge=1)
    max_prompt_chars: int = Field(4_000, ge=1)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)

    # The shared rate limiter: set these to the project's quota for the model.
    rate_limit_requests: int | None = Field(10, description="requests per window; 0 = unlimited")
    rate_limit_images: int | None = Field(10, description="images per window; 0 = unlimited")
    rate_window_seconds: float = Field(60.0, gt=0)
    rate_concurrency: int | None = Field(4, description="concurrent requests; 0 = unlimited")
    # Below 1: the margin absorbs late sends, clock skew and network jitter (core/ratelimit.py).
    rate_safety: float = Field(0.99, gt=0, lt=1)
    # Spend-based limit (paid tiers): dollars per rolling window, shared by every instance.
    rate_limit_spend_usd: float | None = Field(
        None, ge=0, description="dollars of expected cost per RATE_SPEND_WINDOW_SECONDS; unset or 0 = off")
    rate_spend_window_seconds: float = Field(600.0, gt=0)

    # Build this function's SDK clients on a background thread when the instance starts, not on
    # its first request (wiring.start_warm_up). On in the cloud and in the local stack.
    warm_up_clients: bool = False

    # Worker behaviour
    max_attempts: int = Field(5, ge=1, description="attempts before an item is dead-lettered")
    max_wait_seconds: float = Field(
        30.0, gt=0, description="longest one delivery waits for capacity before Pub/Sub retries"
    )
    republish_grace_seconds: float = Field(60.0, ge=0)
    lease_margin_seconds: float = Field(
        30.0, ge=0, description="added to the longest delivery to make an item's lease"
    )

    # The batch lane
    gemini_api_key: SecretStr | None = Field(
        None, description="read only to fingerprint batches; the SDK reads GEMINI_API_KEY itself"
    )
    batch_max_requests: int = Field(1000, ge=1, description="requests per Gemini batch")
    batch_max_output_bytes: int = Field(
        2_000_000_000, ge=1, description="expected results-file size per batch"
    )
    batch_expected_image_bytes: int = Field(
        2_000_000, ge=1, description="expected size of one result line (a base64 image)"
    )
    batch_max_attempts: int = Field(3, ge=1, description="batches an item may go through")
    poller_budget_seconds: float = Field(
        240.0, gt=0, description="a poller call stops starting work after this long"
    )
    batch_lease_seconds: float = Field(
        300.0, gt=0, description="how long a poller owns a batch; above the budget"
    )
    batch_checkpoint_lines: int = Field(200, ge=1)
    batch_upload_concurrency: int = Field(4, ge=1, description="image uploads in flight while ingesting")
    batch_submit_budget_seconds: float = Field(
        3.0, ge=0, description="time the API spends creating batches before leaving them to the poller"
    )

    dead_letter_subscription: str | None = Field(
        None, description="pull subscription on the work topic's dead-letter topic; the poller drains it"
    )

    # Circuit breaker, pending-batch pool
    breaker_threshold: int = Field(3, ge=1, description="consecutive quota failures that open the breaker")
    breaker_cooldown_seconds: float = Field(60.0, gt=0, description="open -> one probe after this long")
    breaker_halt_seconds: float = Field(900.0, gt=0, description="halted (403) -> one probe after this long")
    pool_flush_items: int = Field(100, ge=1, description="diverted items that make the poller create a batch")
    pool_max_age_seconds: float = Field(300.0, ge=0, description="or the age of the oldest diverted item")

    # Usage, spend and budget (the day is Gemini's quota day: it resets at midnight Pacific)
    price_interactive_image_usd: float = Field(0.039, ge=0)
    price_batch_image_usd: float = Field(0.0195, ge=0)
    daily_request_quota: int | None = Field(None, ge=1, description="the model's requests per day, to watch")
    daily_image_quota: int | None = Field(None, ge=1, description="images per day, to watch")
    daily_budget_usd: float | None = Field(None, ge=0, description="jobs that would exceed it are refused")
    usage_counter_shards: int = Field(16, ge=1, le=500)

    idempotency_ttl_seconds: float = Field(86_400.0, gt=0)
    idempotency_takeover_seconds: float = Field(
        120.0, gt=0, description="a submission silent this long is finished by its key's next attempt"
    )
    # Completion events and webhooks (core/events.py)
    events_topic: str = Field("imagefleet-events", description="Topic of the job.completed events")
    webhook_secret: SecretStr | None = Field(
        None, description="whsec_<base64> key that signs webhooks (Standard Webhooks); unset = jobs "
        "with a callback_url are refused",
    )
    webhook_allow_insecure: bool = Field(
        False, description="also accept http:// and private or loopback hosts (local stacks and tests only)"
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60, description="connect and read timeout of one POST")
    webhook_backoff_base_seconds: float = Field(30.0, gt=0, description="wait after the first failed attempt")
    webhook_backoff_max_seconds: float = Field(3600.0, gt=0, description="longest wait between attempts")
    webhook_max_attempts: int = Field(8, ge=1, description="attempts before an event is marked failed")

    @model_validator(mode="after")
    def _webhook_secret_is_usable(self) -> Settings:
        self.webhook_key()  # refuses to start with a malformed secret rather than fail each send
        return self

    def webhook_key(self) -> bytes | None:
        """The signing key's bytes, or None when no secret is set (an empty value counts as unset)."""
        if self.webhook_secret is None or not self.webhook_secret.get_secret_value().strip():
            return None
        return decode_secret(self.webhook_secret.get_secret_value())

    @property
    def event_lease_seconds(self) -> float:
        # Longer than one delivery: a publish, and the webhook's connect and read timeouts.
        return 3 * self.webhook_timeout_seconds + 30

    @model_validator(mode="after")
    def _lease_outlives_budget(self) -> Settings:
        if self.batch_lease_seconds <= self.poller_budget_seconds:
            raise ValueError("BATCH_LEASE_SECONDS must be longer than POLLER_BUDGET_SECONDS")
        return self

    @property
    def batch_items_per_batch(self) -> int:
        by_bytes = max(1, self.batch_max_output_bytes // self.batch_expected_image_bytes)
        return min(self.batch_max_requests, by_bytes)

    @model_validator(mode="after")
    def _api_keys_are_readable(self) -> Settings:
        # Read once: refuses to start with a malformed API_KEYS rather than fail each call.
        self._callers = parse_api_keys(self.api_keys.get_secret_value() if self.api_keys is not None else None)
        return self

    def api_callers(self) -> dict[str, Caller]:
        """{key: caller}; empty when no key is configured (no key check)."""
        return self._callers

    @property
    def lease_seconds(self) -> float:
        # Longer than the slowest delivery (wait + model call), so a live worker never loses it.
        return self.max_wait_seconds + self.gemini_timeout_seconds + self.lease_margin_seconds


@functools.cache
def get_settings() -> Settings:
    return Settings()
