"""All runtime configuration, read from the environment once per instance.

The emulator variables (FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST,
GOOGLE_GEMINI_BASE_URL) and GEMINI_API_KEY are deliberately absent: the SDKs read them.
"""
from __future__ import annotations

import functools

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.gemini_webhooks import decode_gemini_secret
from core.tenants import Caller, parse_api_keys
from core.webhooks import decode_secret


class Settings(BaseSettings):
    # hide_input_in_errors: a malformed WEBHOOK_SECRET must not be echoed into the logs.
    model_config = SettingsConfigDict(extra="ignore", hide_input_in_errors=True)
    _callers: dict[str, Caller] = PrivateAttr(default_factory=dict)

    google_cloud_project: str = Field(description="Project of Firestore, Pub/Sub and GCS")
    images_bucket: str = Field(description="Bucket that receives the generated images")
    work_topic: str = Field("imagefleet-work", description="Topic of the interactive lane")
    # The functions' service account reads buckets a caller must not (the images bucket holds every
    # tenant's images): a job's source file is read only from a bucket listed here.
    source_buckets: str = Field(
        "", description="comma-separated buckets a job's `source` (gs://bucket/object) may name; "
        "Terraform sets its sources bucket; empty = no job may read a source")

    api_keys: SecretStr | None = Field(
        None,
        description="comma-separated X-API-Key entries: key, tenant=key or admin:tenant=key "
        "(core/tenants.py); unset = no key check and one tenant (the cloud's IAM invoker check still applies); "
        "in the cloud from Secret Manager with require_api_keys",
    )

    gemini_model: str | None = Field(
        None, description="the default image model of a job that names none; must be in the catalog; unset = the "
        "catalog's default_model"
    )
    model_catalog_file: str | None = Field(
        None, description="a model catalog (sizes, ratios, lifecycle, prices) to use instead of functions/models.json "
        "(same format)"
    )
    model_check_interval_seconds: float = Field(
        86_400.0, gt=0,
        description="how often the poller runs models.get for every model in use (halted ones: every tick)"
    )
    model_shutdown_warning_days: int = Field(30, ge=0, description="warn this many days before a shutdown date")
    gemini_timeout_seconds: float = Field(60.0, gt=0, description="timeout of one generateContent call")
    gemini_download_timeout_seconds: float = Field(
        3600.0, gt=0,
        description="timeout of one results-file download (sent as X-Server-Timeout); a file of 2K images can pass 1 GB"
    )

    # Routing and input limits
    interactive_threshold: int = Field(
        10, ge=1, description="auto jobs of at least this many items go to the batch lane")
    batch_lane_enabled: bool = Field(
        True, description="false answers batch-lane jobs with 503 lane_unavailable")
    max_items_per_job: int = Field(
        100_000, ge=1, description="most requests in one job's body (MAX_BODY_BYTES binds first when the prompts "
        "average over about 100 bytes)")
    max_items_per_source: int = Field(
        1_000_000, ge=1, description="most items one job reads from a gs:// source file")
    max_prompt_chars: int = Field(4_000, ge=1, description="longest prompt, in characters")
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="largest request body (10 MiB), with or without a Content-Length")

    # The shared rate limiter: set these to the project's quota for the model.
    rate_limit_requests: int | None = Field(
        10, description="the project's requests per window for the model, across every instance; 0 = unlimited")
    rate_limit_images: int | None = Field(
        10, description="the project's images per window for the model, across every instance; 0 = unlimited")
    rate_window_seconds: float = Field(60.0, gt=0, description="the quota window")
    rate_concurrency: int | None = Field(
        4, description="concurrent generateContent calls, across every instance; 0 = unlimited")
    # Below 1: the margin absorbs late sends, clock skew and network jitter (core/ratelimit.py).
    rate_safety: float = Field(
        0.99, gt=0, lt=1, description="fraction of the quota aimed at, below 1: the rest absorbs late sends, "
        "clock skew and network jitter")
    # Spend-based limit (paid tiers): dollars per rolling window, shared by every instance.
    rate_limit_spend_usd: float | None = Field(
        None, ge=0, description="spend-based limit: dollars of expected cost per RATE_SPEND_WINDOW_SECONDS "
        "across every instance; a request is sent only if its price fits; unset or 0 = off")
    rate_spend_window_seconds: float = Field(600.0, gt=0, description="the rolling window of RATE_LIMIT_SPEND_USD")

    # On in the cloud and in the local stack.
    warm_up_clients: bool = Field(
        False, description="build this function's SDK clients on a background thread when the instance starts, "
        "not on its first request, and open the Firestore channel with one read (wiring.start_warm_up)")
    firestore_ops_log_seconds: float | None = Field(
        None, gt=0, description="log this instance's Firestore reads, writes and deletes so far at most this often "
        "(when they changed; ops_log.py); unset = never; benchmarks read the figures from the logs")

    # Worker behaviour
    max_attempts: int = Field(5, ge=1, description="attempts before an item is dead-lettered")
    max_wait_seconds: float = Field(
        30.0, gt=0, description="longest one delivery waits for capacity before Pub/Sub retries"
    )
    republish_grace_seconds: float = Field(
        60.0, ge=0, description="age of an unpublished job before the poller republishes it")
    stuck_lease_grace_seconds: float = Field(
        60.0, ge=0, description="the poller republishes a running item whose lease expired this long ago"
    )
    test_kill_after_upload: bool = Field(
        False, description="TEST ONLY, never set in a deployment: the worker SIGKILLs its own process right "
        "after it creates an image object, so the e2e fault matrix can die between the upload and the commit"
    )
    stuck_queued_seconds: float = Field(
        900.0, gt=0, description="the poller republishes a queued item of a published job untouched this long"
    )
    lease_margin_seconds: float = Field(
        30.0, ge=0, description="added to the longest delivery to make an item's lease; also the clock "
        "skew between instances that leases tolerate (every write of a holder ends this long before its lease)"
    )
    upload_budget_seconds: float = Field(
        60.0, gt=0, description="how long a worker keeps trying to store an image it has paid for, renewing "
        "the item's lease before each try; keep MAX_WAIT + GEMINI_TIMEOUT + this under the worker's timeout"
    )

    # The batch lane
    gemini_api_key: SecretStr | None = Field(
        None, description="read only to fingerprint batches; the SDK (google-genai) reads GEMINI_API_KEY itself; in "
        "the cloud from Secret Manager"
    )
    batch_max_requests: int = Field(1000, ge=1, description="requests per Gemini batch")
    batch_max_output_bytes: int = Field(
        2_000_000_000, ge=1, description="expected results-file size per batch"
    )
    batch_expected_image_bytes: int = Field(
        2_000_000, ge=1, description="expected size of one result line (a base64 image)"
    )
    batch_max_attempts: int = Field(3, ge=1, description="batches an item may go through before it is dead-lettered")
    poller_budget_seconds: float = Field(
        240.0, gt=0, description="a poller call starts no new work after this long (keep it under the function timeout)"
    )
    batch_lease_seconds: float = Field(
        300.0, gt=0, description="how long a poller owns a batch; must exceed POLLER_BUDGET_SECONDS"
    )
    batch_checkpoint_lines: int = Field(1000, ge=1, description="result lines per checkpoint while ingesting, at most")
    batch_checkpoint_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="results-file bytes per checkpoint while ingesting, at most (a checkpoint "
        "comes after BATCH_CHECKPOINT_LINES lines or this many bytes, whichever first)"
    )
    batch_quota_backoff_seconds: float = Field(
        60.0, gt=0, description="first wait after a 429 on batch upload or create that gives no retryDelay; "
        "doubles per 429 in a row, up to 30 times this"
    )
    batch_upload_concurrency: int = Field(4, ge=1, description="image uploads in flight while ingesting")
    batch_submit_budget_seconds: float = Field(
        3.0, ge=0, description="time the API spends creating batches before leaving them to the poller"
    )

    # Gemini documents a 24 h target turnaround for batches and a BATCH_STATE_EXPIRED state
    # (https://ai.google.dev/gemini-api/docs/batch-mode, https://ai.google.dev/api/batch-api);
    # past this deadline the poller cancels a batch itself and resubmits its unfinished items,
    # instead of waiting on Gemini to expire it. 0 = wait for Gemini.
    batch_running_deadline_seconds: float = Field(
        36 * 3600.0, ge=0, description="a batch still pending or running this long after it was created is "
        "cancelled and its unfinished items resubmitted (Gemini's target turnaround is 24 h); 0 = rely on "
        "Gemini's own expiry"
    )
    accept_abandon_seconds: float = Field(
        600.0, gt=0, description="a job still accepting this long after its submitter last wrote it is completed "
        "(all items recorded) or failed by the poller; longer than IDEMPOTENCY_TAKEOVER_SECONDS"
    )

    # Background expansion of accepted jobs (core/expanding.py). Firestore's ramp for a new key
    # range: start at 500 operations/s and grow by half every 5 minutes
    # (https://cloud.google.com/firestore/docs/best-practices#ramping_up_traffic).
    expand_budget_seconds: float = Field(
        60.0, gt=0, description="one expansion call writes items for this long, then hands the rest to a "
        "continuation message (keep it under the poller's timeout)")
    expand_lease_seconds: float = Field(
        180.0, gt=0, description="how long an expansion call owns its job's expansion; must exceed "
        "EXPAND_BUDGET_SECONDS; a job whose lease ran out is resumed by the next poller tick")
    expand_chunk_items: int = Field(
        500, ge=1, le=5000, description="items written per expansion checkpoint (a batch job's chunk is at least "
        "one batch, BATCH_MAX_REQUESTS)")
    expand_ramp_start_per_second: float = Field(
        500.0, gt=0, description="item writes per second at the start of a job's expansion (Firestore's ramp: "
        "500; the local stack sets more, the emulator has no such limit)")
    expand_ramp_growth: float = Field(
        1.5, ge=1.0, description="factor the expansion's write rate grows by every EXPAND_RAMP_PERIOD_SECONDS")
    expand_ramp_period_seconds: float = Field(
        300.0, gt=0, description="seconds between two steps of the expansion's write rate")
    expand_max_attempts: int = Field(
        20, ge=1, description="expansion attempts in a row that fail without writing a chunk (Firestore or Cloud "
        "Storage unavailable, an unreadable record) before the job ends failed with the last error; the attempts "
        "are spaced by a back-off doubling from 5 s up to EXPAND_LEASE_SECONDS (20: about 45 minutes)")

    dead_letter_subscription: str | None = Field(
        None, description="pull subscription on the work topic's dead-letter topic; the poller drains it"
    )

    # Circuit breaker, pending-batch pool
    breaker_threshold: int = Field(3, ge=1, description="consecutive quota failures that open the breaker")
    breaker_cooldown_seconds: float = Field(
        60.0, gt=0, description="open -> one probe after this long (a per-day quota: until midnight Pacific)")
    breaker_halt_seconds: float = Field(900.0, gt=0, description="halted (403) -> one probe after this long")
    pool_flush_items: int = Field(100, ge=1, description="diverted items that make the poller create a batch")
    pool_max_age_seconds: float = Field(300.0, ge=0, description="or the age of the oldest diverted item that makes it")

    # Usage, spend and budget (the day is Gemini's quota day: it resets at midnight Pacific)
    # Unset: each model's price from the catalog; set: this price per image for every model.
    price_interactive_image_usd: float | None = Field(
        None, ge=0,
        description="price per interactive image for every model (set both); unset = each model's catalog price")
    price_batch_image_usd: float | None = Field(
        None, ge=0, description="price per batch image for every model (set both); unset = each model's catalog price")
    daily_request_quota: int | None = Field(
        None, ge=1, description="the model's requests per day: watched (80% / 100% alerts) and used for routing")
    daily_image_quota: int | None = Field(None, ge=1, description="images per day: watched (80% / 100% alerts)")
    daily_budget_usd: float | None = Field(None, ge=0, description="jobs that would exceed it are refused")
    usage_counter_shards: int = Field(16, ge=1, le=500, description="documents each day's counters are spread over")

    idempotency_ttl_seconds: float = Field(86_400.0, gt=0, description="how long an Idempotency-Key is kept")
    records_retention_days: int = Field(
        30, ge=1, description="jobs, items, batch intents, events, pool entries and daily usage counters get an "
        "expire_at this many days out (usage: after their day), and Firestore's TTL policies delete them then"
    )
    idempotency_takeover_seconds: float = Field(
        120.0, gt=0, description="a submission silent this long is finished by its key's next attempt"
    )
    # Completion events and webhooks (core/events.py)
    events_topic: str = Field("imagefleet-events", description="Topic of the job.completed events")
    webhook_secret: SecretStr | None = Field(
        None, description="whsec_ + base64 of 24 to 64 random bytes: the key that signs webhooks (Standard "
        "Webhooks; in the cloud from Secret Manager); unset = jobs with a callback_url are refused",
    )
    webhook_allow_insecure: bool = Field(
        False, description="also accept http:// and private or loopback hosts (local stacks and tests only)"
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=60,
        description="connect timeout, and answer timeout, of one webhook POST (and of one events publish)")
    webhook_backoff_base_seconds: float = Field(
        30.0, gt=0, description="wait after the first failed attempt (then doubling, with jitter)")
    webhook_backoff_max_seconds: float = Field(3600.0, gt=0, description="longest wait between attempts")
    webhook_max_attempts: int = Field(8, ge=1, description="attempts before an event is marked failed")

    # Gemini's batch webhooks, received (core/gemini_webhooks.py, docs/gemini-webhooks.md)
    gemini_webhook_secret: SecretStr | None = Field(
        None, description="the signing secret (whsec_...) that Gemini returned once when the static webhook was "
        "registered (tools/register_gemini_webhook.py); in the cloud from Secret Manager; unset = "
        "POST /v1/gemini/webhooks answers 404 and batches are found by polling alone",
    )
    gemini_webhook_tolerance_seconds: float = Field(
        300.0, gt=0, description="accepted distance between a Gemini webhook's timestamp and our clock (replays)")
    batch_nudges_topic: str = Field(
        "imagefleet-batch-nudges", description="Topic whose push subscription makes scheduled_poller reconcile "
        "one batch at once (published on a Gemini webhook, and by a tick for each finished batch to ingest); "
        "empty = no nudges: a tick ingests finished batches itself, one after another")
    batch_ingest_nudge_grace_seconds: float = Field(
        300.0, gt=0, description="a tick publishes no second ingest nudge for a batch within this long of the "
        "first (a lost nudge is published again after it)")

    @model_validator(mode="after")
    def _webhook_secret_is_usable(self) -> Settings:
        self.webhook_key()  # refuses to start with a malformed secret rather than fail each send
        return self

    def webhook_key(self) -> bytes | None:
        """The signing key's bytes, or None when no secret is set (an empty value counts as unset)."""
        if self.webhook_secret is None or not self.webhook_secret.get_secret_value().strip():
            return None
        return decode_secret(self.webhook_secret.get_secret_value())

    def gemini_webhook_key(self) -> bytes | None:
        """The Gemini webhook secret's key bytes, or None when unset (an empty value counts as unset)."""
        if self.gemini_webhook_secret is None or not self.gemini_webhook_secret.get_secret_value().strip():
            return None
        return decode_gemini_secret(self.gemini_webhook_secret.get_secret_value())

    @model_validator(mode="after")
    def _gemini_webhook_secret_is_usable(self) -> Settings:
        self.gemini_webhook_key()  # refuses to start with a malformed secret rather than 401 every event
        return self

    @property
    def event_lease_seconds(self) -> float:
        # Longer than one delivery: a publish, and the webhook's connect and read timeouts.
        return 3 * self.webhook_timeout_seconds + 30

    def catalog(self):
        import catalog

        return catalog.load(self.model_catalog_file)

    @property
    def default_model(self) -> str:
        return self.gemini_model or self.catalog().default_model

    @model_validator(mode="after")
    def _default_model_is_in_the_catalog(self) -> Settings:
        # Refuse to start rather than send every job to a model we know nothing of.
        if self.catalog().get(self.default_model) is None:
            raise ValueError(f"GEMINI_MODEL {self.gemini_model!r} is not in the model catalog; "
                             f"listed: {', '.join(self.catalog().models)}")
        return self

    @model_validator(mode="after")
    def _resend_wins_over_the_poller(self) -> Settings:
        # A client resending its request (Idempotency-Key) resumes an abandoned accept; the
        # poller only finishes or fails one that nobody resumed.
        if self.accept_abandon_seconds <= self.idempotency_takeover_seconds:
            raise ValueError("ACCEPT_ABANDON_SECONDS must be longer than IDEMPOTENCY_TAKEOVER_SECONDS")
        return self

    @model_validator(mode="after")
    def _expansion_lease_outlives_budget(self) -> Settings:
        if self.expand_lease_seconds <= self.expand_budget_seconds:
            raise ValueError("EXPAND_LEASE_SECONDS must be longer than EXPAND_BUDGET_SECONDS")
        return self

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
    def upload_try_seconds(self) -> float:
        # One upload with the client's retries ends a margin before the lease renewed ahead of it.
        return self.lease_seconds - self.lease_margin_seconds

    @property
    def lease_seconds(self) -> float:
        # Longer than the slowest delivery (wait + model call), so a live worker never loses it.
        return self.max_wait_seconds + self.gemini_timeout_seconds + self.lease_margin_seconds


@functools.cache
def get_settings() -> Settings:
    return Settings()
