# Gemini's batch webhooks (docs/gemini-webhooks.md). Gemini POSTs batch.succeeded/failed/expired
# to gemini_webhook, signed per Standard Webhooks with the secret it returned once at
# registration (https://ai.google.dev/gemini-api/docs/webhooks). The function checks the
# signature, makes the batch's intent due at once and publishes a nudge; the nudges topic's
# push subscription calls scheduled_poller, which reconciles that one intent. Polling remains
# the fallback: without webhooks a batch waits for the next scheduled tick, nothing else.

# The signing secret. Like the other secrets, Terraform creates it and never a version; the
# one-time registration (tools/register_gemini_webhook.py) prints the secret Gemini returns,
# straight into a version:
#   .venv/bin/python tools/register_gemini_webhook.py --uri <gemini_webhook URL> \
#     | gcloud secrets versions add <secret_id> --data-file=-
resource "google_secret_manager_secret" "gemini_webhook_secret" {
  secret_id = "${var.name_prefix}-gemini-webhook-secret"

  replication {
    user_managed {
      replicas {
        location = var.region
      }
    }
  }

  depends_on = [google_project_service.this]
}

resource "google_secret_manager_secret_iam_member" "gemini_webhook_secret" {
  secret_id = google_secret_manager_secret.gemini_webhook_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.gemini_webhook.email}"
}

# The receiver's identity: reads the intents (Firestore), publishes nudges, reads its secret.
resource "google_service_account" "gemini_webhook" {
  account_id   = "${var.name_prefix}-gemini-hook"
  display_name = "${var.name_prefix} gemini_webhook"
  depends_on   = [google_project_service.this]
}

# Firestore has no narrower level than the project (see iam.tf): the receiver looks an intent
# up by its batch and moves its next_check_at.
resource "google_project_iam_member" "gemini_webhook_datastore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.gemini_webhook.email}"
}

# Public on purpose: Gemini sends no Google identity token, so Cloud Run's IAM check cannot
# tell Gemini from anyone; the Standard Webhooks signature is the authentication, checked in
# constant time by the function, and anything unsigned is a 401 that touches nothing.
resource "google_cloud_run_service_iam_member" "gemini_webhook_public" {
  #checkov:skip=CKV_GCP_102:Gemini's webhooks carry no Google identity token; the function authenticates each request by its HMAC signature (Standard Webhooks) and refuses the rest with 401.
  location = google_cloudfunctions2_function.gemini_webhook.location
  service  = google_cloudfunctions2_function.gemini_webhook.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloudfunctions2_function" "gemini_webhook" {
  #checkov:skip=CKV_GCP_124:Gemini calls it from the internet; the signature check is its authentication (see gemini_webhook_public).
  name        = "${var.name_prefix}-gemini-webhook"
  location    = var.region
  description = "imagefleet gemini_webhook: Gemini's signed batch events -> the batch's ingest now"

  build_config {
    runtime           = "python311"
    entry_point       = "gemini_webhook"
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
    service_account_email            = google_service_account.gemini_webhook.email
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    min_instance_count               = 0
    max_instance_count               = var.gemini_webhook_max_instances
    max_instance_request_concurrency = 8
    available_memory                 = "512Mi"
    available_cpu                    = "1"
    # A lookup, a write and a publish: Gemini wants its answer within seconds.
    timeout_seconds = 30
    environment_variables = merge(local.app_env, local.optional_env, local.retention_env, {
      THREADS                          = 8
      GEMINI_WEBHOOK_TOLERANCE_SECONDS = var.gemini_webhook_tolerance_seconds
    })

    secret_environment_variables {
      key        = "GEMINI_WEBHOOK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.gemini_webhook_secret.secret_id
      version    = "latest"
    }
  }

  depends_on = [
    google_project_service.this,
    google_secret_manager_secret_iam_member.gemini_webhook_secret,
    google_project_iam_member.build_log_writer,
    google_project_iam_member.build_function_sources,
    google_storage_bucket_iam_member.build_source,
    google_artifact_registry_repository_iam_member.build_writer,
    time_sleep.grants_propagated,
  ]
}

resource "google_pubsub_topic" "batch_nudges" {
  #checkov:skip=CKV_GCP_83:A nudge carries one batch intent id; Google-managed encryption is enough and a CMEK key is not part of this stack.
  name = "${var.name_prefix}-batch-nudges"

  # A nudge older than a few ticks is worth nothing: the scheduled ticks have done its work.
  message_retention_duration = "3600s"

  depends_on = [google_project_service.this]
}

# The receiver publishes a nudge per event; the poller one more after an ingest that ran out
# of budget (it carries on at once rather than at the next tick).
resource "google_pubsub_topic_iam_member" "gemini_webhook_nudges_publisher" {
  topic  = google_pubsub_topic.batch_nudges.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.gemini_webhook.email}"
}

resource "google_pubsub_topic_iam_member" "poller_nudges_publisher" {
  topic  = google_pubsub_topic.batch_nudges.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.poller.email}"
}

# The API publishes one nudge per accepted job: its expansion (core/expanding.py) runs in the
# poller, pushed by the same subscription; the poller nudges itself to carry an expansion on.
resource "google_pubsub_topic_iam_member" "api_nudges_publisher" {
  topic  = google_pubsub_topic.batch_nudges.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.api.email}"
}

# The push identity of the nudges: it may invoke the poller and nothing else.
resource "google_service_account" "nudge_push" {
  account_id   = "${var.name_prefix}-nudge-push"
  display_name = "${var.name_prefix} Pub/Sub push (batch nudges) -> scheduled_poller"
  depends_on   = [google_project_service.this]
}

resource "google_cloud_run_service_iam_member" "poller_invoker_nudges" {
  location = google_cloudfunctions2_function.poller.location
  service  = google_cloudfunctions2_function.poller.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.nudge_push.email}"
}

# Pub/Sub's service agent mints the push identity's OIDC tokens (as for the worker's, iam.tf).
resource "google_service_account_iam_member" "nudge_push_token_creator" {
  service_account_id = google_service_account.nudge_push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_project_service_identity.pubsub.email}"
}

# The poller answers a nudge after reconciling its intent (at most POLLER_BUDGET_SECONDS of
# ingest, then it checkpoints and nudges itself again): the ack deadline outlasts that, so a
# nudge is not pushed a second time while the first runs. A nudge that finds the intent leased
# is answered 503 and pushed again after the back-off below; the poller runs one request at a
# time, so a push it cannot take yet is retried the same way, and the ticks meet the intent anyway.
resource "google_pubsub_subscription" "batch_nudges_push" {
  name  = "${var.name_prefix}-batch-nudges-push"
  topic = google_pubsub_topic.batch_nudges.id

  ack_deadline_seconds       = min(600, var.poller_timeout_seconds)
  message_retention_duration = "3600s"

  push_config {
    push_endpoint = google_cloudfunctions2_function.poller.service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.nudge_push.email
      audience              = google_cloudfunctions2_function.poller.service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "300s"
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_cloud_run_service_iam_member.poller_invoker_nudges,
    google_service_account_iam_member.nudge_push_token_creator,
  ]
}
