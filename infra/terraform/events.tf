# Completion events (functions/core/events.py): when a job ends, the function that finalizes it
# (the worker, the poller for batch jobs, the API for a cancel) publishes a job.completed
# message here, and POSTs it to the job's callback_url signed with the webhook secret. The
# scheduled poller retries whatever is still due.
resource "google_pubsub_topic" "events" {
  #checkov:skip=CKV_GCP_83:Events carry job ids, item counts and a manifest URI; Google-managed encryption is enough and a CMEK key is not part of this stack.
  name = "${var.name_prefix}-events"

  depends_on = [google_project_service.this]
}

locals {
  # The settings of functions/config.py about events, merged into every function's environment
  # beside local.app_env (functions.tf). WEBHOOK_SECRET comes from Secret Manager;
  # WEBHOOK_ALLOW_INSECURE is never set in the cloud.
  events_env = {
    EVENTS_TOPIC                 = google_pubsub_topic.events.name
    WEBHOOK_TIMEOUT_SECONDS      = var.webhook_timeout_seconds
    WEBHOOK_BACKOFF_BASE_SECONDS = var.webhook_backoff_base_seconds
    WEBHOOK_BACKOFF_MAX_SECONDS  = var.webhook_backoff_max_seconds
    WEBHOOK_MAX_ATTEMPTS         = var.webhook_max_attempts
  }
}

# An example consumer: a pull subscription that keeps a week of events.
#   gcloud pubsub subscriptions pull <name> --limit 10 --auto-ack
# Each message's data is the webhook body; its attributes are type, job_id and event_id (the
# webhook-id), which consumers use to drop the duplicates at-least-once delivery allows.
resource "google_pubsub_subscription" "events_example" {
  name  = "${var.name_prefix}-events-sub"
  topic = google_pubsub_topic.events.id

  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# The webhook signing secret (Standard Webhooks: whsec_ + base64 of 24 to 64 random bytes).
# Like the Gemini key, Terraform creates the secret and never a version, so the value is never
# in the state or a plan:
#   printf 'whsec_%s' "$(openssl rand -base64 32)" | gcloud secrets versions add <secret_id> --data-file=-
# The functions read version "latest" when an instance starts (functions.tf); give receivers
# the same value to verify with.
resource "google_secret_manager_secret" "webhook_secret" {
  secret_id = "${var.name_prefix}-webhook-secret"

  replication {
    user_managed {
      replicas {
        location = var.region
      }
    }
  }

  depends_on = [google_project_service.this]
}

# ---------------------------------------------------------------------------------------------
# IAM: the three functions finalize jobs (core/jobs.py finalize_job_if_done: the worker after
# an item, the poller for batches and for retries, the API on a cancel), so each publishes
# events and signs webhooks. Granted on the one topic and the one secret.
# ---------------------------------------------------------------------------------------------

resource "google_pubsub_topic_iam_member" "api_events_publisher" {
  topic  = google_pubsub_topic.events.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.api.email}"
}

resource "google_pubsub_topic_iam_member" "worker_events_publisher" {
  topic  = google_pubsub_topic.events.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_pubsub_topic_iam_member" "poller_events_publisher" {
  topic  = google_pubsub_topic.events.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.poller.email}"
}

resource "google_secret_manager_secret_iam_member" "api_webhook_secret" {
  secret_id = google_secret_manager_secret.webhook_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.api.email}"
}

resource "google_secret_manager_secret_iam_member" "worker_webhook_secret" {
  secret_id = google_secret_manager_secret.webhook_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_secret_manager_secret_iam_member" "poller_webhook_secret" {
  secret_id = google_secret_manager_secret.webhook_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.poller.email}"
}
