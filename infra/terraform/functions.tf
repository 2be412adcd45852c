# The deploy unit is functions/ (main.py beside requirements.txt). The object is named by the
# archive's content hash, so a change of source is a new object and a new build, and an
# unchanged tree deploys nothing.
data "archive_file" "src" {
  type             = "zip"
  source_dir       = "${path.module}/../../functions"
  output_path      = "${path.module}/.build/functions-src.zip"
  output_file_mode = "0644"
  # Exact paths (from fileset) rather than glob patterns, which older archive providers ignore.
  excludes = setunion(
    fileset("${path.module}/../../functions", "**/__pycache__/**"),
    fileset("${path.module}/../../functions", "**/*.pyc"),
  )
}

resource "google_storage_bucket_object" "src" {
  name   = "${data.archive_file.src.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.src.output_path
}

# Builds push to a repository of ours, so the build service account's writer role is scoped
# to it, and old images are cleaned up.
resource "google_artifact_registry_repository" "functions" {
  #checkov:skip=CKV_GCP_84:The images hold our open-source code and its public dependencies; Google-managed encryption is enough.
  location      = var.region
  repository_id = "${var.name_prefix}-functions"
  format        = "DOCKER"
  description   = "Images built from functions/ by Cloud Build for the ${var.name_prefix} functions."

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 5
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.this]
}

locals {
  # The model catalog the functions load (an unknown GEMINI_MODEL stops them at start).
  model_catalog = jsondecode(file("${path.module}/../../functions/models.json"))
  gemini_model  = coalesce(var.gemini_model, local.model_catalog.default_model)

  # Every setting of functions/config.py that Terraform manages, named as the upper-case
  # Settings field. All three functions get the same set and each reads what it uses, so a
  # setting never differs between the function that writes a value and the one that reads it.
  # Optional limits: unset (null) means "not watched", so they are left out of the environment.
  optional_env = { for k, v in {
    DAILY_REQUEST_QUOTA = var.daily_request_quota
    DAILY_IMAGE_QUOTA   = var.daily_image_quota
    DAILY_BUDGET_USD    = var.daily_budget_usd
    # Unset: the catalog decides (functions/models.json: its default model, each model's prices).
    GEMINI_MODEL                = var.gemini_model
    PRICE_INTERACTIVE_IMAGE_USD = var.price_interactive_image_usd
    PRICE_BATCH_IMAGE_USD       = var.price_batch_image_usd
  } : k => v if v != null }

  app_env = {
    GOOGLE_CLOUD_PROJECT        = var.project_id
    IMAGES_BUCKET               = google_storage_bucket.images.name
    SOURCE_BUCKETS              = join(",", concat([google_storage_bucket.job_sources.name], var.extra_source_buckets))
    WORK_TOPIC                  = google_pubsub_topic.work.name
    GEMINI_TIMEOUT_SECONDS      = var.gemini_timeout_seconds
    RATE_LIMIT_REQUESTS         = local.rate_limit_requests
    RATE_LIMIT_IMAGES           = local.rate_limit_images
    RATE_WINDOW_SECONDS         = var.rate_window_seconds
    RATE_CONCURRENCY            = local.rate_concurrency
    RATE_SAFETY                 = var.rate_safety
    WARM_UP_CLIENTS             = true
    INTERACTIVE_THRESHOLD       = var.interactive_threshold
    MAX_ITEMS_PER_JOB           = var.max_items_per_job
    MAX_PROMPT_CHARS            = var.max_prompt_chars
    MAX_BODY_BYTES              = var.max_body_bytes
    MAX_ATTEMPTS                = var.max_attempts
    MAX_WAIT_SECONDS            = var.max_wait_seconds
    LEASE_MARGIN_SECONDS        = var.lease_margin_seconds
    REPUBLISH_GRACE_SECONDS     = var.republish_grace_seconds
    BATCH_LANE_ENABLED          = var.batch_lane_enabled
    BATCH_MAX_REQUESTS          = var.batch_max_requests
    BATCH_MAX_OUTPUT_BYTES      = var.batch_max_output_bytes
    BATCH_EXPECTED_IMAGE_BYTES  = var.batch_expected_image_bytes
    BATCH_MAX_ATTEMPTS          = var.batch_max_attempts
    BATCH_SUBMIT_BUDGET_SECONDS = var.batch_submit_budget_seconds
    POLLER_BUDGET_SECONDS       = var.poller_budget_seconds
    BATCH_LEASE_SECONDS         = var.batch_lease_seconds
    DEAD_LETTER_SUBSCRIPTION    = google_pubsub_subscription.dead_letter.name
    BREAKER_THRESHOLD           = var.breaker_threshold
    BREAKER_COOLDOWN_SECONDS    = var.breaker_cooldown_seconds
    BREAKER_HALT_SECONDS        = var.breaker_halt_seconds
    POOL_FLUSH_ITEMS            = var.pool_flush_items
    POOL_MAX_AGE_SECONDS        = var.pool_max_age_seconds
    BATCH_CHECKPOINT_LINES      = var.batch_checkpoint_lines
    BATCH_CHECKPOINT_BYTES      = var.batch_checkpoint_bytes
    BATCH_UPLOAD_CONCURRENCY    = var.batch_upload_concurrency
    BATCH_NUDGES_TOPIC          = google_pubsub_topic.batch_nudges.name
  }

  # The build's identity and destination, the same for the three functions.
  build_service_account = google_service_account.build.id
  docker_repository     = google_artifact_registry_repository.functions.id
}

# --- http_api: the HTTP API (jobs in, status out). Private: callers need roles/run.invoker. ---
resource "google_cloudfunctions2_function" "api" {
  #checkov:skip=CKV_GCP_124:The API is the public entry point (ingress is var.api_ingress); IAM still guards it: no allUsers invoker, only api_invoker_members.
  name        = "${var.name_prefix}-api"
  location    = var.region
  description = "imagefleet HTTP API: POST/GET/DELETE /v1/jobs, GET /healthz"

  build_config {
    runtime           = "python311"
    entry_point       = "http_api"
    service_account   = local.build_service_account
    docker_repository = local.docker_repository
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.src.name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.api.email
    ingress_settings                 = var.api_ingress
    all_traffic_on_latest_revision   = true
    min_instance_count               = 0
    max_instance_count               = var.api_max_instances
    max_instance_request_concurrency = var.api_concurrency
    available_memory                 = var.api_memory
    available_cpu                    = var.api_cpu
    timeout_seconds                  = var.api_timeout_seconds
    # THREADS: functions-framework's gunicorn threads, one per concurrent request.
    environment_variables = merge(local.app_env, local.optional_env, local.events_env, local.retention_env, { THREADS = var.api_concurrency })

    # Read by google-genai (the batch lane creates Gemini batches from the API) and
    # fingerprinted by the batch lane. Resolved at instance start from Secret Manager.
    secret_environment_variables {
      key        = "GEMINI_API_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.gemini_api_key.secret_id
      version    = "latest"
    }

    # Signs the job.completed webhooks (events.tf); every function may finalize a job.
    secret_environment_variables {
      key        = "WEBHOOK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.webhook_secret.secret_id
      version    = "latest"
    }

    dynamic "secret_environment_variables" {
      for_each = google_secret_manager_secret.api_keys
      content {
        key        = "API_KEYS"
        project_id = var.project_id
        secret     = secret_environment_variables.value.secret_id
        version    = "latest"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.api_concurrency == 1 || tonumber(var.api_cpu) >= 1
      error_message = "api_concurrency > 1 needs api_cpu >= 1."
    }
  }

  depends_on = [
    google_project_service.this,
    google_secret_manager_secret_iam_member.api,
    google_secret_manager_secret_iam_member.api_webhook_secret,
    google_secret_manager_secret_iam_member.api_keys,
    google_project_iam_member.build_log_writer,
    google_project_iam_member.build_function_sources,
    google_storage_bucket_iam_member.build_source,
    google_artifact_registry_repository_iam_member.build_writer,
    time_sleep.grants_propagated,
  ]
}

# --- pubsub_worker: one Pub/Sub message = one image, pushed by google_pubsub_subscription.worker_push. ---
resource "google_cloudfunctions2_function" "worker" {
  name        = "${var.name_prefix}-worker"
  location    = var.region
  description = "imagefleet worker: generates one image per work message under the shared rate limit"

  build_config {
    runtime           = "python311"
    entry_point       = "pubsub_worker"
    service_account   = local.build_service_account
    docker_repository = local.docker_repository
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.src.name
      }
    }
  }

  service_config {
    service_account_email = google_service_account.worker.email
    # Pub/Sub push from this project counts as internal traffic.
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    min_instance_count             = 0
    # Instances x concurrency = deliveries in flight: the coarse throttle, sized from the quota
    # in sizing.tf. The shared limiter in Firestore keeps them under the quota; deliveries
    # beyond its leases wait at most MAX_WAIT_SECONDS and then hand the message back.
    max_instance_count               = local.worker_max_instances
    max_instance_request_concurrency = local.worker_concurrency
    available_memory                 = var.worker_memory
    available_cpu                    = var.worker_cpu
    timeout_seconds                  = var.worker_timeout_seconds
    environment_variables            = merge(local.app_env, local.optional_env, local.events_env, local.retention_env, { THREADS = local.worker_concurrency })

    secret_environment_variables {
      key        = "GEMINI_API_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.gemini_api_key.secret_id
      version    = "latest"
    }

    # Signs the job.completed webhooks (events.tf); every function may finalize a job.
    secret_environment_variables {
      key        = "WEBHOOK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.webhook_secret.secret_id
      version    = "latest"
    }
  }

  lifecycle {
    precondition {
      condition     = local.worker_concurrency == 1 || tonumber(var.worker_cpu) >= 1
      error_message = "worker_concurrency > 1 needs worker_cpu >= 1."
    }
  }

  depends_on = [
    google_project_service.this,
    google_secret_manager_secret_iam_member.worker,
    google_secret_manager_secret_iam_member.worker_webhook_secret,
    google_project_iam_member.build_log_writer,
    google_project_iam_member.build_function_sources,
    google_storage_bucket_iam_member.build_source,
    google_artifact_registry_repository_iam_member.build_writer,
    time_sleep.grants_propagated,
  ]
}

# --- scheduled_poller: called by Cloud Scheduler (scheduler.tf). ---
resource "google_cloudfunctions2_function" "poller" {
  name        = "${var.name_prefix}-poller"
  location    = var.region
  description = "imagefleet poller: republishes stalled jobs, drives and ingests Gemini batches"

  build_config {
    runtime           = "python311"
    entry_point       = "scheduled_poller"
    service_account   = local.build_service_account
    docker_repository = local.docker_repository
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.src.name
      }
    }
  }

  service_config {
    service_account_email = google_service_account.poller.email
    # Cloud Scheduler in this project counts as internal traffic.
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    min_instance_count               = 0
    max_instance_count               = var.poller_max_instances
    max_instance_request_concurrency = 1
    available_memory                 = var.poller_memory
    available_cpu                    = var.poller_cpu
    timeout_seconds                  = var.poller_timeout_seconds
    environment_variables            = merge(local.app_env, local.optional_env, local.events_env, local.retention_env, { THREADS = 1 })

    secret_environment_variables {
      key        = "GEMINI_API_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.gemini_api_key.secret_id
      version    = "latest"
    }

    # Signs the job.completed webhooks (events.tf); every function may finalize a job.
    secret_environment_variables {
      key        = "WEBHOOK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.webhook_secret.secret_id
      version    = "latest"
    }
  }

  lifecycle {
    precondition {
      condition     = var.poller_timeout_seconds > var.poller_budget_seconds
      error_message = "poller_timeout_seconds must exceed poller_budget_seconds, so a call checkpoints before it is killed."
    }
    precondition {
      condition     = var.batch_lease_seconds > var.poller_budget_seconds
      error_message = "batch_lease_seconds must exceed poller_budget_seconds (functions/config.py refuses to start otherwise)."
    }
  }

  depends_on = [
    google_project_service.this,
    google_secret_manager_secret_iam_member.poller,
    google_secret_manager_secret_iam_member.poller_webhook_secret,
    google_project_iam_member.build_log_writer,
    google_project_iam_member.build_function_sources,
    google_storage_bucket_iam_member.build_source,
    google_artifact_registry_repository_iam_member.build_writer,
    time_sleep.grants_propagated,
  ]
}
