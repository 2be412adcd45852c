# The interactive lane: one message per image, published by http_api and, for jobs whose
# publishing was interrupted, by scheduled_poller.
resource "google_pubsub_topic" "work" {
  #checkov:skip=CKV_GCP_83:Messages carry only a job id and an item key; Google-managed encryption is enough and a CMEK key is not part of this stack.
  name = "${var.name_prefix}-work"

  depends_on = [google_project_service.this]
}

# Where Pub/Sub moves a work message after dead_letter_max_delivery_attempts deliveries.
resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Messages carry only a job id and an item key; Google-managed encryption is enough and a CMEK key is not part of this stack.
  name = "${var.name_prefix}-work-dead-letter"

  depends_on = [google_project_service.this]
}

# Why a push subscription we own rather than an Eventarc Pub/Sub trigger on the worker: Eventarc
# creates and manages the subscription of a gen2 function's trigger, and the function's
# event_trigger offers only "retry or not", no dead-letter topic (one added by hand to the
# managed subscription is outside Terraform and Eventarc). So the worker is deployed without a
# trigger, and this subscription pushes to its Cloud Run URL with an OIDC token, with our retry
# policy and a dead-letter queue. Its @functions_framework.cloud_event entry point decodes the
# raw push body ({"message": ..., "subscription": ...}), as it does in the local stack.
#
# The worker answers 2xx to ack and 500 (RetryLater) to hand a message back, so every
# hand-back for capacity counts as a delivery attempt: the dead-letter policy is a backstop
# for messages the worker cannot process at all; items that really fail are dead-lettered in
# Firestore by the worker itself after MAX_ATTEMPTS.
resource "google_pubsub_subscription" "worker_push" {
  name  = "${var.name_prefix}-work-push"
  topic = google_pubsub_topic.work.id

  # A push that is not answered within the ack deadline is redelivered while the first one
  # may still be running: keep it above the longest delivery (MAX_WAIT + GEMINI_TIMEOUT).
  ack_deadline_seconds       = var.worker_ack_deadline_seconds
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = google_cloudfunctions2_function.worker.service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloudfunctions2_function.worker.service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "${var.worker_retry_min_backoff_seconds}s"
    maximum_backoff = "${var.worker_retry_max_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.dead_letter_max_delivery_attempts
  }

  # Never expire: a quiet week must not delete the worker's feed (the default is 31 days).
  expiration_policy {
    ttl = ""
  }

  lifecycle {
    precondition {
      condition     = var.worker_ack_deadline_seconds > var.max_wait_seconds + var.gemini_timeout_seconds + 2 * var.webhook_timeout_seconds
      error_message = "worker_ack_deadline_seconds must exceed max_wait_seconds + gemini_timeout_seconds + 2 x webhook_timeout_seconds (the inline webhook of a job's last item), or deliveries are pushed twice."
    }
    precondition {
      condition     = var.worker_timeout_seconds > var.max_wait_seconds + var.gemini_timeout_seconds + 2 * var.webhook_timeout_seconds && var.worker_timeout_seconds <= var.worker_ack_deadline_seconds
      error_message = "worker_timeout_seconds must exceed max_wait_seconds + gemini_timeout_seconds + 2 x webhook_timeout_seconds and not exceed worker_ack_deadline_seconds."
    }
  }

  depends_on = [
    google_cloud_run_service_iam_member.worker_invoker_push,
    google_service_account_iam_member.push_token_creator,
  ]
}

# Pull subscription on the dead-letter topic. scheduled_poller drains it every tick and ends
# each message's item dead_lettered (POST /v1/jobs/{id}:retry re-queues them).
resource "google_pubsub_subscription" "dead_letter" {
  name  = "${var.name_prefix}-work-dead-letter"
  topic = google_pubsub_topic.dead_letter.id

  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# The Pub/Sub service agent moves dead letters: it publishes to the dead-letter topic and
# acknowledges on the source subscription.
resource "google_project_service_identity" "pubsub" {
  provider = google-beta

  project = var.project_id
  service = "pubsub.googleapis.com"

  depends_on = [google_project_service.this]
}

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letter.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_project_service_identity.pubsub.email}"
}

resource "google_pubsub_subscription_iam_member" "worker_push_subscriber" {
  subscription = google_pubsub_subscription.worker_push.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_project_service_identity.pubsub.email}"
}

# The poller consumes the dead letters (core/dead_letters.py drain_dead_letters): pull and ack on this one
# subscription only.
resource "google_pubsub_subscription_iam_member" "poller_dead_letter_subscriber" {
  subscription = google_pubsub_subscription.dead_letter.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.poller.email}"
}
