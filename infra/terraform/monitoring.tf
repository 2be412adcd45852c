# Log-based metrics on the functions' own log lines, and alert policies on them.
#
# The functions log one Cloud Logging JSON object per line (functions/logs.py): Cloud Run turns
# each into an entry with its own severity and a jsonPayload, so the filters match fields:
# jsonPayload.quota_id, jsonPayload.state, jsonPayload.alert.

locals {
  worker_logs = <<-EOT
    resource.type="cloud_run_revision"
    resource.labels.service_name="${google_cloudfunctions2_function.worker.name}"
  EOT

  function_services = join(" OR ", [for f in [
    google_cloudfunctions2_function.api,
    google_cloudfunctions2_function.worker,
    google_cloudfunctions2_function.poller,
  ] : "\"${f.name}\""])
}

# usecases.process_item: a WARNING "quota exceeded (...)" with jsonPayload.quota_id, one line
# per 429 from Gemini. A few are expected (the limiter aims just under the quota);
# a stream of them means RATE_LIMIT_* is above the project's real quota.
resource "google_logging_metric" "worker_quota_exceeded" {
  name        = "${var.name_prefix}-worker-quota-exceeded"
  description = "429 RESOURCE_EXHAUSTED answers from Gemini seen by pubsub_worker, by quota id."
  filter      = "${local.worker_logs}severity=WARNING jsonPayload.quota_id:*"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key         = "quota_id"
      value_type  = "STRING"
      description = "The violated quota, e.g. GenerateRequestsPerMinutePerProjectPerModel."
    }
  }

  label_extractors = {
    quota_id = "EXTRACT(jsonPayload.quota_id)"
  }
}

# main.pubsub_worker: the line "item <job>/<key>: <state> ..." carries jsonPayload.state, which
# is dead_lettered once an item has failed MAX_ATTEMPTS times.
resource "google_logging_metric" "items_dead_lettered" {
  name        = "${var.name_prefix}-items-dead-lettered"
  description = "Interactive items pubsub_worker gave up on after MAX_ATTEMPTS failed attempts."
  filter      = "${local.worker_logs}jsonPayload.state=\"dead_lettered\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
}

# ERROR and CRITICAL lines of the three functions, and Cloud Run's own errors about them (an
# instance out of memory, a crash). A worker handing a message back to Pub/Sub (routine under
# quota pressure) answers 503 and logs a WARNING, so it does not count here; a worker that
# fails every delivery shows in the backlog and dead-letter alerts.
resource "google_logging_metric" "function_errors" {
  name        = "${var.name_prefix}-function-errors"
  description = "ERROR lines logged by the imagefleet functions, and Cloud Run errors about their instances."
  filter      = <<-EOT
    resource.type="cloud_run_revision"
    resource.labels.service_name=(${local.function_services})
    (
      severity>=ERROR
    )
  EOT

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
}

resource "google_monitoring_alert_policy" "quota_exceeded" {
  display_name          = "${var.name_prefix}: Gemini quota exceeded"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "429s from Gemini above ${var.alert_quota_warnings} per ${var.alert_window_seconds}s"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.worker_quota_exceeded.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_quota_warnings
      duration        = "0s"
      aggregations {
        alignment_period     = "${var.alert_window_seconds}s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The worker keeps meeting 429s: RATE_LIMIT_REQUESTS / RATE_LIMIT_IMAGES (variables rate_limit_*) are probably above the project's quota for ${local.gemini_model}. The `quota_id` label of the metric names the quota."
  }

  alert_strategy {
    auto_close = "1800s"
  }
}

resource "google_monitoring_alert_policy" "function_errors" {
  display_name          = "${var.name_prefix}: function errors"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "ERROR lines above ${var.alert_error_logs} per ${var.alert_window_seconds}s"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.function_errors.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_error_logs
      duration        = "0s"
      aggregations {
        alignment_period     = "${var.alert_window_seconds}s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A function logged errors. Logs: `resource.type=\"cloud_run_revision\" AND severity>=ERROR` in Logs Explorer."
  }

  alert_strategy {
    auto_close = "1800s"
  }
}

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "${var.name_prefix}: dead letters"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "Items dead-lettered by the worker"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.items_dead_lettered.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "${var.alert_window_seconds}s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  conditions {
    display_name = "Messages on the dead-letter topic"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.label.subscription_id = \"${google_pubsub_subscription.dead_letter.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Items ended `dead_lettered` (their jobs show the last error), or Pub/Sub gave up on work messages after ${var.dead_letter_max_delivery_attempts} deliveries. Inspect the latter with `gcloud pubsub subscriptions pull ${google_pubsub_subscription.dead_letter.name} --limit 10`; the poller ends their items `dead_lettered`; `POST /v1/jobs/{id}:retry` re-queues them."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

resource "google_monitoring_alert_policy" "work_backlog" {
  display_name          = "${var.name_prefix}: interactive lane stalled"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "Oldest unacked work message older than ${var.alert_oldest_unacked_seconds}s"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.label.subscription_id = \"${google_pubsub_subscription.worker_push.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_oldest_unacked_seconds
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Work messages wait longer than expected: the quota is saturated by a large backlog, or the worker fails its deliveries (see its logs and the function errors alert)."
  }

  alert_strategy {
    auto_close = "1800s"
  }
}

# Usage and breaker alerts: core/accounting.py logs WARNING at 80% and ERROR at 100% of each
# configured daily limit (DAILY_REQUEST_QUOTA, DAILY_IMAGE_QUOTA, DAILY_BUDGET_USD) with
# jsonPayload.alert = daily_<limit>_80 / _100, and core/breaker.py logs every transition with
# jsonPayload.alert = breaker_<state> (ERROR for breaker_halted: a 403 stopped the lane).
# core/model_halts.py and core/model_watch.py add model_halted (ERROR: Gemini answered 404 for a
# model), model_restored and model_shutdown_near (WARNING: an announced shutdown within 30 days).
resource "google_logging_metric" "usage_alerts" {
  name        = "${var.name_prefix}-usage-alerts"
  description = "Daily quota and budget thresholds crossed, and circuit breaker transitions."
  filter      = <<-EOT
    resource.type="cloud_run_revision"
    resource.labels.service_name=(${local.function_services})
    jsonPayload.alert:*
  EOT

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key         = "alert"
      value_type  = "STRING"
      description = "daily_requests_80, daily_budget_100, breaker_open, breaker_halted, model_halted, ..."
    }
  }

  label_extractors = {
    alert = "EXTRACT(jsonPayload.alert)"
  }
}

resource "google_monitoring_alert_policy" "usage" {
  display_name          = "${var.name_prefix}: quota, budget or breaker"
  combiner              = "OR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "A daily limit reached 80% or 100%, or the breaker opened or halted"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.usage_alerts.name}\" AND metric.label.alert != \"breaker_closed\" AND metric.label.alert != \"breaker_half_open\" AND metric.label.alert != \"model_restored\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.alert"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A daily quota or budget passed 80% (WARNING) or 100% (ERROR), or the circuit breaker opened (quota exhausted: auto jobs go to batch) or halted (403 from Gemini: generation stopped, no failover), or a model was halted (404 from Gemini: the model is gone; its items wait, submit with another `model` or GEMINI_MODEL) or nears its announced shutdown. `GET /v1/stats` shows the counters, the breaker's transitions and the models."
  }
}
