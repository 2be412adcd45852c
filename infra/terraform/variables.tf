# ---------------------------------------------------------------------------------------------
# Where
# ---------------------------------------------------------------------------------------------

variable "project_id" {
  type        = string
  description = "Project to deploy into."
}

variable "region" {
  type        = string
  description = "Region of the functions, the buckets, the scheduler job and the Artifact Registry repository."
  default     = "us-central1"
}

variable "firestore_location" {
  type        = string
  description = "Location of the Firestore (default) database, e.g. nam5 or us-central1; null means var.region."
  default     = null
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name (functions, topics, service accounts, buckets after the project id)."
  default     = "imagefleet"

  validation {
    # Service account ids are at most 30 characters: the longest suffix is "-scheduler" (10).
    condition     = can(regex("^[a-z][a-z0-9-]{2,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix: 4 to 20 lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every resource that takes labels (beside app = name_prefix)."
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Gemini and the shared rate limiter (functions/config.py)
# ---------------------------------------------------------------------------------------------

variable "gemini_model" {
  type        = string
  description = "GEMINI_MODEL: the image model of a job that names none. One of the ids in functions/models.json (the catalog); its default_model when null."
  default     = null
}

variable "gemini_timeout_seconds" {
  type        = number
  description = "GEMINI_TIMEOUT_SECONDS: timeout of one generateContent call."
  default     = 60
}

variable "model_requests_per_minute" {
  type        = number
  description = "The project's generateContent quota for the model, in requests per minute (AI Studio shows it). The rate limits, RATE_CONCURRENCY and the worker's instances and concurrency are derived from it (sizing.tf, docs/deploying.md)."
  default     = 10

  validation {
    condition     = var.model_requests_per_minute >= 1
    error_message = "model_requests_per_minute is at least 1."
  }
}

variable "model_latency_seconds" {
  type        = number
  description = "Assumed duration of one image generateContent call, used to size RATE_CONCURRENCY (Little's law); the high end of 10-20 s by default. Measure yours and set it."
  default     = 20

  validation {
    condition     = var.model_latency_seconds > 0
    error_message = "model_latency_seconds is more than 0."
  }
}

variable "rate_limit_requests" {
  type        = number
  description = "RATE_LIMIT_REQUESTS: the project's request quota per window for the model (0 = unlimited); null derives it from model_requests_per_minute."
  default     = null
}

variable "rate_limit_images" {
  type        = number
  description = "RATE_LIMIT_IMAGES: the project's image quota per window for the model (0 = unlimited); null derives it from model_requests_per_minute."
  default     = null
}

variable "rate_window_seconds" {
  type        = number
  description = "RATE_WINDOW_SECONDS: the quota window."
  default     = 60
}

variable "rate_concurrency" {
  type        = number
  description = "RATE_CONCURRENCY: concurrent generateContent calls across every instance (0 = unlimited); null derives it from model_requests_per_minute and model_latency_seconds."
  default     = null
}

variable "rate_safety" {
  type        = number
  description = "RATE_SAFETY: fraction of the quota aimed at; the rest absorbs late sends, clock skew and network jitter."
  default     = 0.99

  validation {
    condition     = var.rate_safety > 0 && var.rate_safety < 1
    error_message = "rate_safety is in (0, 1)."
  }
}

# ---------------------------------------------------------------------------------------------
# The interactive lane (functions/config.py)
# ---------------------------------------------------------------------------------------------

variable "interactive_threshold" {
  type        = number
  description = "INTERACTIVE_THRESHOLD: auto jobs of at least this many items go to the batch lane."
  default     = 10
}

variable "max_attempts" {
  type        = number
  description = "MAX_ATTEMPTS: failed generateContent attempts (429s excluded) before an item is dead-lettered."
  default     = 5
}

variable "max_wait_seconds" {
  type        = number
  description = "MAX_WAIT_SECONDS: longest a delivery waits for limiter capacity before handing the message back to Pub/Sub."
  default     = 30
}

variable "lease_margin_seconds" {
  type        = number
  description = "LEASE_MARGIN_SECONDS: added to MAX_WAIT_SECONDS + GEMINI_TIMEOUT_SECONDS to make an item's lease."
  default     = 30
}

variable "republish_grace_seconds" {
  type        = number
  description = "REPUBLISH_GRACE_SECONDS: age of an unpublished job before the poller republishes it."
  default     = 60
}

variable "max_items_per_job" {
  type        = number
  description = "MAX_ITEMS_PER_JOB: requests accepted in one job."
  default     = 10000
}

variable "max_prompt_chars" {
  type        = number
  description = "MAX_PROMPT_CHARS: longest prompt accepted."
  default     = 4000
}

variable "max_body_bytes" {
  type        = number
  description = "MAX_BODY_BYTES: largest request body accepted by the API."
  default     = 10485760
}

# ---------------------------------------------------------------------------------------------
# The batch lane (functions/config.py)
# ---------------------------------------------------------------------------------------------

variable "batch_lane_enabled" {
  type        = bool
  description = "BATCH_LANE_ENABLED: false answers batch-lane jobs with 503 lane_unavailable."
  default     = true
}

variable "batch_max_requests" {
  type        = number
  description = "BATCH_MAX_REQUESTS: requests per Gemini batch."
  default     = 1000
}

variable "batch_max_output_bytes" {
  type        = number
  description = "BATCH_MAX_OUTPUT_BYTES: expected results-file size of one batch."
  default     = 2000000000
}

variable "batch_expected_image_bytes" {
  type        = number
  description = "BATCH_EXPECTED_IMAGE_BYTES: expected size of one result line (a base64 image)."
  default     = 2000000
}

variable "batch_max_attempts" {
  type        = number
  description = "BATCH_MAX_ATTEMPTS: batches an item may go through before it is dead-lettered."
  default     = 3
}

variable "batch_submit_budget_seconds" {
  type        = number
  description = "BATCH_SUBMIT_BUDGET_SECONDS: time the API spends creating batches before leaving the rest to the poller."
  default     = 3
}

variable "poller_budget_seconds" {
  type        = number
  description = "POLLER_BUDGET_SECONDS: a poller call starts no new work after this long; below poller_timeout_seconds."
  default     = 240
}

variable "batch_lease_seconds" {
  type        = number
  description = "BATCH_LEASE_SECONDS: how long a poller owns a batch; above poller_budget_seconds."
  default     = 300
}

variable "batch_checkpoint_lines" {
  type        = number
  description = "BATCH_CHECKPOINT_LINES: result lines per checkpoint while ingesting, at most."
  default     = 1000
}

variable "batch_checkpoint_bytes" {
  type        = number
  description = "BATCH_CHECKPOINT_BYTES: results-file bytes per checkpoint while ingesting, at most."
  default     = 268435456
}

variable "batch_upload_concurrency" {
  type        = number
  description = "BATCH_UPLOAD_CONCURRENCY: image uploads in flight while ingesting."
  default     = 4
}

# ---------------------------------------------------------------------------------------------
# The functions
# ---------------------------------------------------------------------------------------------

variable "api_ingress" {
  type        = string
  description = "Ingress of http_api: ALLOW_ALL (callers still need roles/run.invoker), ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  default     = "ALLOW_ALL"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.api_ingress)
    error_message = "api_ingress is ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}

variable "api_invoker_members" {
  type        = list(string)
  description = "Principals allowed to call http_api (roles/run.invoker on its service), e.g. [\"group:imaging@example.com\"]. Never allUsers."
  default     = []

  validation {
    condition     = alltrue([for m in var.api_invoker_members : !contains(["allUsers", "allAuthenticatedUsers"], m)])
    error_message = "http_api is private: allUsers and allAuthenticatedUsers are not accepted."
  }
}

variable "api_max_instances" {
  type        = number
  description = "Most instances of http_api."
  default     = 10
}

variable "api_concurrency" {
  type        = number
  description = "Requests one http_api instance serves at once."
  default     = 8
}

variable "api_memory" {
  type        = string
  description = "Memory of an http_api instance (a 10,000-prompt job is parsed and written from memory)."
  default     = "1Gi"
}

variable "api_cpu" {
  type        = string
  description = "vCPUs of an http_api instance; at least 1 when api_concurrency > 1."
  default     = "1"
}

variable "api_timeout_seconds" {
  type        = number
  description = "Request timeout of http_api."
  default     = 60
}

variable "worker_max_instances" {
  type        = number
  description = "Most instances of pubsub_worker. With worker_concurrency it caps the deliveries in flight: the coarse throttle beside the shared Firestore limiter. null derives it (sizing.tf)."
  default     = null
}

variable "worker_concurrency" {
  type        = number
  description = "Deliveries one pubsub_worker instance handles at once (max_instance_request_concurrency and gunicorn THREADS). null derives it (sizing.tf)."
  default     = null
}

variable "worker_memory" {
  type        = string
  description = "Memory of a pubsub_worker instance."
  default     = "512Mi"
}

variable "worker_cpu" {
  type        = string
  description = "vCPUs of a pubsub_worker instance; at least 1 when worker_concurrency > 1."
  default     = "1"
}

variable "worker_timeout_seconds" {
  type        = number
  description = "Request timeout of pubsub_worker: above MAX_WAIT_SECONDS + GEMINI_TIMEOUT_SECONDS, at most the ack deadline."
  default     = 120
}

variable "worker_ack_deadline_seconds" {
  type        = number
  description = "Ack deadline of the push subscription: a push not answered by then is redelivered, so keep it above MAX_WAIT_SECONDS + GEMINI_TIMEOUT_SECONDS."
  default     = 120

  validation {
    condition     = var.worker_ack_deadline_seconds >= 10 && var.worker_ack_deadline_seconds <= 600
    error_message = "Pub/Sub accepts ack deadlines from 10 to 600 seconds."
  }
}

variable "worker_retry_min_backoff_seconds" {
  type        = number
  description = "Retry policy of the push subscription: first redelivery delay after a nack (a hand-back for capacity is a nack)."
  default     = 10
}

variable "worker_retry_max_backoff_seconds" {
  type        = number
  description = "Retry policy of the push subscription: longest redelivery delay."
  default     = 300

  validation {
    condition     = var.worker_retry_max_backoff_seconds <= 600
    error_message = "Pub/Sub accepts a maximum backoff of at most 600 seconds."
  }
}

variable "dead_letter_max_delivery_attempts" {
  type        = number
  description = "Deliveries of one message before Pub/Sub moves it to the dead-letter topic. Hand-backs for capacity count, so keep it high: the worker dead-letters items itself after MAX_ATTEMPTS real failures."
  default     = 100

  validation {
    condition     = var.dead_letter_max_delivery_attempts >= 5 && var.dead_letter_max_delivery_attempts <= 100
    error_message = "Pub/Sub accepts 5 to 100 delivery attempts."
  }
}

variable "poller_schedule" {
  type        = string
  description = "Cron schedule of the Cloud Scheduler job that calls scheduled_poller."
  default     = "* * * * *"
}

variable "poller_time_zone" {
  type        = string
  description = "Time zone of poller_schedule."
  default     = "Etc/UTC"
}

variable "poller_max_instances" {
  type        = number
  description = "Most instances of scheduled_poller. Cloud Scheduler never overlaps two ticks (scheduler.tf), but each finished batch is ingested by a nudge pushed to an instance of its own (one request per instance): this many batches ingest at once, plus the tick; a push past it is retried by Pub/Sub. The leases keep any two callers safe."
  default     = 10

  validation {
    condition     = var.poller_max_instances >= 1
    error_message = "poller_max_instances is at least 1."
  }
}

variable "poller_memory" {
  type        = string
  description = "Memory of a scheduled_poller instance (decodes images while ingesting results files)."
  default     = "1Gi"
}

variable "poller_cpu" {
  type        = string
  description = "vCPUs of a scheduled_poller instance."
  default     = "1"
}

variable "poller_timeout_seconds" {
  type        = number
  description = "Request timeout of scheduled_poller and the scheduler's attempt deadline: at least poller_budget_seconds + poller_tail_seconds, at most 1800."
  default     = 300
}

variable "poller_tail_seconds" {
  type        = number
  description = "Longest a tick runs past POLLER_BUDGET_SECONDS: the step in flight when the budget ends (uploads in flight and one checkpoint of an ingest, one batch submission, one webhook POST of up to 2 x webhook_timeout_seconds)."
  default     = 60

  validation {
    condition     = var.poller_tail_seconds >= 30
    error_message = "poller_tail_seconds is at least 30: a webhook alone may take 2 x webhook_timeout_seconds."
  }
}

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

variable "images_retention_days" {
  type        = number
  description = "Images and manifests are deleted this many days after they were written."
  default     = 30

  validation {
    condition     = var.images_retention_days >= 1
    error_message = "images_retention_days is at least 1."
  }
}

variable "staged_bodies_retention_days" {
  type        = number
  description = "Staged request bodies (_accepted/ in the images bucket) left behind by an expansion are deleted this many days after they were written; far longer than any expansion."
  default     = 7

  validation {
    condition     = var.staged_bodies_retention_days >= 2
    error_message = "staged_bodies_retention_days is at least 2: an expansion must never lose its source."
  }
}

variable "records_retention_days" {
  type        = number
  description = "RECORDS_RETENTION_DAYS: Firestore records (jobs, items, batch intents, events, pool entries, usage shards) get an expire_at this many days out, and TTL policies delete them then. Keep it equal to images_retention_days, so a job's record and its images go together."
  default     = 30

  validation {
    condition     = var.records_retention_days >= 1
    error_message = "records_retention_days is at least 1."
  }
}

variable "firestore_delete_protection" {
  type        = bool
  description = "Turn on delete protection of the Firestore database."
  default     = true
}

# ---------------------------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------------------------

variable "grant_propagation_wait" {
  type        = string
  description = "How long the functions wait after the grants they deploy with (IAM changes typically take effect within 2 minutes). A Go duration, e.g. 2m."
  default     = "2m"

  validation {
    condition     = can(regex("^[0-9]+(s|m)$", var.grant_propagation_wait))
    error_message = "grant_propagation_wait is a number of seconds or minutes, e.g. 120s or 2m."
  }
}

variable "log_metric_wait" {
  type        = string
  description = "How long the alert policies wait after their log-based metrics are created (the Monitoring API may not know a new metric for up to 10 minutes). A Go duration, e.g. 10m."
  default     = "10m"

  validation {
    condition     = can(regex("^[0-9]+(s|m)$", var.log_metric_wait))
    error_message = "log_metric_wait is a number of seconds or minutes, e.g. 600s or 10m."
  }
}

variable "notification_channels" {
  type        = list(string)
  description = "Monitoring notification channel ids (projects/<p>/notificationChannels/<n>) the alert policies notify."
  default     = []
}

variable "alert_window_seconds" {
  type        = number
  description = "Alignment window of the log-based alert conditions."
  default     = 300
}

variable "alert_quota_warnings" {
  type        = number
  description = "Alert when the worker logs more than this many 429 quota warnings in alert_window_seconds (a few are normal: the limiter aims just under the quota)."
  default     = 20
}

variable "alert_error_logs" {
  type        = number
  description = "Alert when the functions log more than this many ERROR lines in alert_window_seconds."
  default     = 0
}

variable "alert_oldest_unacked_seconds" {
  type        = number
  description = "Alert when the oldest undelivered work message is older than this."
  default     = 1800
}

variable "require_api_keys" {
  type        = bool
  description = "Also require an X-API-Key on http_api, from the <name_prefix>-api-keys secret (its value is added outside Terraform): comma-separated entries key, tenant=key or admin:tenant=key; each key's tenant owns its jobs and usage."
  default     = false
}

# --- Circuit breaker, pending-batch pool, usage and budget (functions/config.py) ---------------

variable "breaker_threshold" {
  type        = number
  description = "Consecutive 429s from Gemini that open the circuit breaker (auto jobs and queued items go to batch)."
  default     = 3
}

variable "breaker_cooldown_seconds" {
  type        = number
  description = "How long the breaker stays open after per-minute quota failures before one probe request."
  default     = 60
}

variable "breaker_halt_seconds" {
  type        = number
  description = "How long a 403 (permission, billing, spend cap) halts generation before one probe request."
  default     = 900
}

variable "pool_flush_items" {
  type        = number
  description = "Diverted items that make the poller create a batch from the pending-batch pool."
  default     = 100
}

variable "pool_max_age_seconds" {
  type        = number
  description = "Or the age of the oldest diverted item that makes the poller create that batch."
  default     = 300
}

variable "price_interactive_image_usd" {
  type        = number
  description = "PRICE_INTERACTIVE_IMAGE_USD: a price per interactive image for every model, instead of each model's price in functions/models.json (null = the catalog's)."
  default     = null
}

variable "price_batch_image_usd" {
  type        = number
  description = "PRICE_BATCH_IMAGE_USD: a price per batch image for every model, instead of the catalog's (null = the catalog's)."
  default     = null
}

variable "daily_request_quota" {
  type        = number
  description = "The model's requests-per-day quota, watched (WARNING at 80%, ERROR at 100%) and used for routing; null = not watched."
  default     = null
}

variable "daily_image_quota" {
  type        = number
  description = "Images per day to watch (WARNING at 80%, ERROR at 100%); null = not watched."
  default     = null
}

variable "daily_budget_usd" {
  type        = number
  description = "Daily spend limit: a job whose estimate exceeds what is left is sent to batch or refused with 429; null = none."
  default     = null
}

# ---------------------------------------------------------------------------------------------
# Completion events and webhooks (events.tf, functions/core/events.py)
# ---------------------------------------------------------------------------------------------

variable "webhook_timeout_seconds" {
  type        = number
  description = "WEBHOOK_TIMEOUT_SECONDS: connect and read timeout of one webhook POST (and of one events publish)."
  default     = 10

  validation {
    condition     = var.webhook_timeout_seconds > 0 && var.webhook_timeout_seconds <= 60
    error_message = "webhook_timeout_seconds is more than 0 and at most 60."
  }
}

variable "webhook_backoff_base_seconds" {
  type        = number
  description = "WEBHOOK_BACKOFF_BASE_SECONDS: wait after the first failed delivery; it doubles after each one (with jitter)."
  default     = 30
}

variable "webhook_backoff_max_seconds" {
  type        = number
  description = "WEBHOOK_BACKOFF_MAX_SECONDS: longest wait between two delivery attempts."
  default     = 3600
}

variable "webhook_max_attempts" {
  type        = number
  description = "WEBHOOK_MAX_ATTEMPTS: delivery attempts before an event is marked failed (logged at ERROR)."
  default     = 8
}

variable "gemini_webhook_max_instances" {
  type        = number
  description = "Most instances of gemini_webhook (one Gemini batch event per request, answered in milliseconds)."
  default     = 3
}

variable "gemini_webhook_tolerance_seconds" {
  type        = number
  description = "GEMINI_WEBHOOK_TOLERANCE_SECONDS: accepted distance between a Gemini webhook's timestamp and the clock (replay window)."
  default     = 300
}

variable "job_sources_retention_days" {
  type        = number
  description = "Prompt files uploaded to the job sources bucket are deleted this many days after upload (a job reads its file while it expands, within minutes of its accept)."
  default     = 7

  validation {
    condition     = var.job_sources_retention_days >= 1
    error_message = "job_sources_retention_days is at least 1."
  }
}

variable "extra_source_buckets" {
  type        = list(string)
  description = "Callers' own buckets a job's source may also name (SOURCE_BUCKETS). Their owners grant roles/storage.objectViewer to the accounts in the source_reader_accounts output; never list a bucket whose readers differ from the API's callers."
  default     = []
}

variable "job_source_uploaders" {
  type        = list(string)
  description = "Members (user:..., group:..., serviceAccount:...) that may upload prompt files to the job sources bucket: roles/storage.objectCreator only, so no one lists or reads another caller's files."
  default     = []
}
