"""The HTTP API's request bodies, validated with pydantic. Limits come from Settings via context."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from core.breaker import BreakerState
from core.events import EventState
from core.models import IntentState, ItemSpec, ItemState, JobSpec, JobStatus, Lane
from core.webhooks import MAX_CALLBACK_URL_CHARS, CallbackUrlError, check_callback_url

# Every ratio some catalog model has (functions/models.json); which ones the job's model has is
# checked after parsing (model_problems).
ASPECT_RATIOS = ("1:1", "1:4", "1:8", "2:3", "3:2", "3:4", "4:1", "4:3", "4:5", "5:4", "8:1", "9:16", "16:9", "21:9")
AspectRatio = Literal["1:1", "1:4", "1:8", "2:3", "3:2", "3:4", "4:1", "4:3", "4:5", "5:4", "8:1", "9:16", "16:9",
                      "21:9"]

# Client keys become Firestore document ids and object names ({job_id}/{key}.png): no slash,
# no dot segments, nothing a path or a console could misread.
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
# Names the CLI's download writes beside the images (<key>.png), and the device names Windows
# will not create a file under whatever the extension: compared ignoring case, as disks do.
RESERVED_KEYS = frozenset(
    {"manifest", "contact-sheet", "con", "prn", "aux", "nul"}
    | {f"{port}{n}" for port in ("com", "lpt") for n in range(1, 10)}
)
# C0 controls but tab and line ends, DEL, C1 controls (U+0080-U+009F), and lone surrogates
# (json.loads accepts "\ud800"; it cannot be encoded as UTF-8 for Firestore or Gemini).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# In a one-line field every control character is out, tab and line ends too.
_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class ItemRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    prompt: str = Field(min_length=1, description="What to draw")
    key: str | None = Field(
        None, pattern=KEY_PATTERN,
        description="Optional client key, unique in the job; names the image object",
    )
    aspect_ratio: AspectRatio = "1:1"
    domain: str | None = Field(None, max_length=200, description="Optional context for the prompt")
    quality: Literal["standard", "high"] = "standard"

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        limit = (info.context or {}).get("max_prompt_chars", 4000)
        if len(value) > limit:
            raise ValueError(f"prompt is {len(value)} characters; the limit is {limit}")
        if bad := _CONTROL.search(value):
            raise ValueError(f"prompt contains the control character U+{ord(bad.group()):04X} at {bad.start()}")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and (bad := _ANY_CONTROL.search(value)):
            raise ValueError(f"domain contains the control character U+{ord(bad.group()):04X} at {bad.start()}")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and value.lower() in RESERVED_KEYS:
            raise ValueError(f"{value!r} is a reserved name (reserved, ignoring case: "
                             f"{', '.join(sorted(RESERVED_KEYS))})")
        return value


class JobRequest(BaseModel):
    # One of the two, never both: the contract says so as the handler does.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["requests"]}, {"required": ["source"]}]})

    requests: list[ItemRequest] | None = Field(
        None, min_length=1, description="One entry per image; or give `source` instead")
    source: str | None = Field(
        None, max_length=1100, pattern=r"^gs://",
        description="Instead of `requests`: a gs://bucket/object.jsonl (or .ndjson, .csv) file, one image a "
                    "line with the fields of `requests`, in a bucket this deployment allows (SOURCE_BUCKETS). "
                    "It is read at the generation it has when the job is accepted. `auto` takes the batch lane "
                    "when there is one; the cost is estimated and reserved once the file is read")
    on_bad_line: Literal["skip", "fail"] = Field(
        "skip", description="With `source`: skip a line that is refused (reported in the job's `expansion`), "
                            "or fail the whole job at the first one")
    lane: Literal["auto", "interactive", "batch"] = "auto"
    model: str | None = Field(
        None, max_length=100,
        description="The image model (the catalog's ids: GET /v1/stats lists them under `models`); "
                    "unset = the deployment's default (GEMINI_MODEL)",
    )
    callback_url: str | None = Field(
        None, max_length=MAX_CALLBACK_URL_CHARS, json_schema_extra={"format": "uri"},
        description="Optional https URL that receives the job.completed webhook, signed as Standard Webhooks "
                    "define (webhook-id, webhook-timestamp, webhook-signature)",
    )

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        context = info.context or {}
        if not context.get("webhook_secret_set"):
            # Nothing is ever sent unsigned.
            raise ValueError("this deployment has no webhook signing secret")
        try:
            return check_callback_url(value, allow_insecure=bool(context.get("webhook_allow_insecure")))
        except CallbackUrlError as e:
            raise ValueError(str(e)) from None

    @field_validator("requests")
    @classmethod
    def _count(cls, value: list[ItemRequest] | None, info: ValidationInfo) -> list[ItemRequest] | None:
        limit = (info.context or {}).get("max_items_per_job", 100_000)
        if value is not None and len(value) > limit:
            raise ValueError(f"{len(value)} requests; the limit per job is {limit}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> JobRequest:
        if (self.requests is None) == (self.source is None):
            raise ValueError("give either requests or source (one of the two)")
        return self

    @model_validator(mode="after")
    def _unique_keys(self) -> JobRequest:
        # Ignoring case: "K.png" and "k.png" are one file on the disks of macOS and Windows.
        seen: dict[str, int] = {}
        for i, key in enumerate(self.item_keys()):
            folded = key.lower()
            if folded in seen:
                raise ValueError(
                    f"requests[{i}].key {key!r} repeats requests[{seen[folded]}].key "
                    f"{self.item_keys()[seen[folded]]!r}; keys must be unique, ignoring case"
                )
            seen[folded] = i
        return self

    def item_keys(self) -> list[str]:
        return [r.key or f"item-{i:05d}" for i, r in enumerate(self.requests or ())]

    def to_spec(self) -> JobSpec:
        return JobSpec(
            items=tuple(
                ItemSpec(
                    key=key, prompt=r.prompt, aspect_ratio=r.aspect_ratio,
                    domain=r.domain, quality=r.quality,
                )
                for key, r in zip(self.item_keys(), self.requests or (), strict=True)
            ),
            requested_lane=self.lane,
            callback_url=self.callback_url,
        )


def model_problems(job: JobRequest, catalog, default_model: str) -> list[dict]:
    """What the job asks of its model that the model does not have (catalog: core.catalog.Catalog),
    as error fields naming the field and listing what is allowed."""
    model = job.model or default_model
    spec = catalog.get(model)
    if spec is None:
        return [{"field": "model", "problem": f"unknown model {model!r}; allowed: {', '.join(catalog.models)}"}]
    out = []
    for i, r in enumerate(job.requests or ()):
        for field, problem in spec.problems(r.aspect_ratio, r.quality):
            out.append({"field": f"requests[{i}].{field}", "problem": problem})
            if len(out) >= 20:  # enough to show the pattern; a 10,000-item job need not list every one
                return out
    return out


def error_fields(exc) -> list[dict]:
    """pydantic errors as [{"field": "requests[3].prompt", "problem": "..."}]. A field name the
    client made up (an unknown one) is shown as a short, escaped excerpt."""
    out = []
    for err in exc.errors(include_url=False):
        field = ""
        for part in err["loc"]:
            part = part if isinstance(part, int) else excerpt(str(part))
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else part)
        msg = err["msg"].removeprefix("Value error, ")
        out.append({"field": field or "(body)", "problem": msg})
    return out


def excerpt(text: str, limit: int = 40) -> str:
    """User input as an error may show it: a short prefix with anything unprintable escaped, so
    an error never echoes 100 KB back, or puts control characters into a client's terminal."""
    cut = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    cut = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in cut)
    return cut + ("…" if len(text) > limit else "")


# --- responses: the OpenAPI contract, and what every answer is serialised through ---------


class Response(BaseModel):
    """A response body. A field the handler sets but the contract lacks is an error (a 500 in
    the tests, never a silent extra); `from` and other aliases are written as their alias."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JobAccepted(Response):
    job_id: str
    lane: Lane
    status: JobStatus = Field(
        description="accepting for a new job (its items are written in the background; its status shows "
        "`expansion`); the job's current status when an Idempotency-Key replays it")
    item_count: int = Field(description="The body's requests; 0 for a `source` job (known once the file is read)")
    status_url: str = Field(description="Relative URL of the job's status")
    route_reason: str | None = Field(description="Why the job took its lane")
    estimated_cost_usd: float | None = Field(description="Each item at its model's price for its size in the lane")
    model: str = Field(description="The image model the job uses")


class ItemStatus(Response):
    key: str
    index: int
    prompt: str
    state: ItemState
    attempts: int
    gcs_uri: str | None
    error: str | None
    finish_reason: str | None
    lane: Lane | None


class BatchStatus(Response):
    intent_id: str
    state: IntentState
    gemini_batch: str | None
    gemini_state: str | None
    attempt: int
    items: int
    outcome: str | None
    error: str | None = Field(None, description="the service's last refusal of this batch's input (upload or create)")
    submit_failures: int = Field(0, description="refusals in a row; at 3 the batch's items fail with `error`")


class ItemCounts(Response):
    queued: int
    running: int
    succeeded: int
    failed: int
    dead_lettered: int
    cancelled: int


class JobStatusResponse(Response):
    job_id: str
    lane: Lane
    status: JobStatus
    model: str
    item_count: int
    created_at: float
    updated_at: float
    finished_at: float | None
    manifest_uri: str | None
    counts: ItemCounts
    items: list[ItemStatus]
    next_page_token: str | None
    batches: list[BatchStatus] = Field(description="Up to 100 of the job's Gemini batches, in id order")
    batch_count: int = Field(0, description="How many batches the job has")
    batches_next_page_token: str | None = Field(
        None, description="Pass as batches_page_token for the next page of batches; null on the last")
    round: int = Field(description="1, plus one per :retry that re-opened the finished job")
    route_reason: str | None
    error: str | None = Field(description="Why the job failed as a whole (the API stopped while accepting it)")
    estimated_cost_usd: float | None
    actual_cost_usd: float = Field(description="Succeeded items x the price of the lane each ran in")
    events: list[EventStatus] = Field(description="The job's completion events and their delivery")
    expansion: ExpansionProgress | None = Field(
        None, description="How far the job's source (its body, or its gs:// file) has been read into items; "
                          "the job is accepting until it is all read")


class BadLine(Response):
    line: int = Field(description="1-based line number in the source (a CSV's header is line 1)")
    reason: str


class ExpansionProgress(Response):
    lines_read: int
    items_created: int
    bad_line_count: int = Field(description="Lines refused (skipped, or the one that failed the job)")
    bad_lines: list[BadLine] = Field(description="The first refused lines")
    failed_attempts: int = Field(0, description="Attempts in a row that failed without writing a chunk; at "
                                                "EXPAND_MAX_ATTEMPTS the job fails")
    last_error: str | None = Field(None, description="The last failed attempt's error")


class EventStatus(Response):
    event_id: str = Field(description="Also the webhook-id header: the receiver's idempotency key")
    type: Literal["job.completed"]
    state: EventState
    attempts: int
    last_error: str | None
    delivered_at: float | None


class DryRun(Response):
    dry_run: Literal[True]
    lane: Lane
    item_count: int
    estimated_cost_usd: float
    reason: str
    breaker: BreakerState
    model: str


class RetryAccepted(Response):
    job_id: str
    round: int
    status: JobStatus
    requeued: int
    requeued_interactive: int
    requeued_batch: int


class BreakerTransition(Response):
    at: float
    from_: str = Field(alias="from")
    to: str
    reason: str


class BreakerStatus(Response):
    state: BreakerState
    consecutive_failures: int
    reason: str | None
    opened_at: float | None
    retry_at: float | None
    transitions: list[BreakerTransition]


class Stats(Response):
    tenant: str = Field(description="The caller's tenant (its API key's)")
    admin: bool = Field(description="True: the caller sees every tenant's usage")
    day: str = Field(description="The quota day (it resets at midnight Pacific)")
    resets_at: float
    counters: dict[str, float | int | dict[str, int]] = Field(
        description="An admin: the project's requests, images, succeeded, failed, dead_lettered, quota_errors, "
        "quota_errors_by_id, spend_usd, reserved_usd, released_usd, diverted, ...; a tenant: its own requests, "
        "images, interactive_images, batch_images, succeeded, failed, dead_lettered, spend_usd (absent = 0)")
    tenants: dict[str, dict[str, float | int]] | None = Field(
        None, description="An admin only: each tenant's counters, as a tenant sees its own")
    limits: dict[str, float | int | None] = Field(description="The project's daily limits, shared by every tenant")
    prices: dict[str, float]
    budget: dict[str, float | None] = Field(
        description="spent_usd: the caller's spend (an admin: the project's); left_usd: the shared daily budget's "
        "rest; committed_usd (an admin only): reserved by accepted jobs")
    breaker: BreakerStatus
    pending_batch_pool: int | None
    models: list[ModelStatus] = Field(description="The catalog's models: lifecycle, shutdown, halts")


class ModelStatus(Response):
    id: str
    default: bool = Field(description="The model of a job that names none")
    lifecycle: Literal["ga", "preview", "deprecated"] | None = Field(description="None: halted but not in the catalog")
    shutdown_date: str | None = Field(description="Announced shutdown (ISO date)")
    days_left: int | None = Field(description="Days until the shutdown date (negative once past)")
    shutdown_near: bool
    halted: bool = Field(description="Gemini answered 404 for it: its items wait, new jobs for it get 503")
    halt_reason: str | None
    source_url: str | None


class FieldProblem(Response):
    field: str
    problem: str


class ErrorDetail(Response):
    code: int
    reason: str
    message: str
    fields: list[FieldProblem] | None = None


class ErrorResponse(Response):
    error: ErrorDetail


class Health(Response):
    status: Literal["ok"]
