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

  function_logs = <<-EOT
    resource.type="cloud_run_revision"
    resource.labels.service_name=(${local.function_services})
  EOT
}

# The Monitoring API answers 404 "Cannot find metric(s) that match type ... If a metric was
# created recently, it could take up to 10 minutes to become available" when an alert policy
# names a log-based metric created moments before, so a first apply that creates both fails
# (https://github.com/hashicorp/terraform-provider-google/issues/11102). The policies read each
# metric's type through this wait, so they are created log_metric_wait after their metrics;
# `triggers` runs the wait again whenever a metric is replaced (a new name is a new metric),
# and only then (https://registry.terraform.io/providers/hashicorp/time/latest/docs/resources/sleep).
resource "time_sleep" "log_metrics_visible" {
  create_duration = var.log_metric_wait

  triggers = {
    worker_quota_exceeded = "logging.googleapis.com/user/${google_logging_metric.worker_quota_exceeded.name}"
    items_dead_lettered   = "logging.googleapis.com/user/${google_logging_metric.items_dead_lettered.name}"
    function_errors       = "logging.googleapis.com/user/${google_logging_metric.function_errors.name}"
    usage_alerts          = "logging.googleapis.com/user/${google_logging_metric.usage_alerts.name}"
  }
}

locals {
  # Metric types as seen through the wait: referencing them orders every policy after it.
  metric_types = time_sleep.log_metrics_visible.triggers
}

# core/worker.py process_item: a WARNING "quota exceeded (...)" with jsonPayload.quota_id, one line
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

# Every log line that ends an item dead_lettered carries jsonPayload.state="dead_lettered":
# main.pubsub_worker's "item <job>/<key>: <state> ..." once an item has failed MAX_ATTEMPTS
# times, and whichever function settles a dead letter Pub/Sub gave up on (the poller draining
# the dead-letter subscription). All three services are matched, so the count does not depend
# on which function wrote the line.
resource "google_logging_metric" "items_dead_lettered" {
  name        = "${var.name_prefix}-items-dead-lettered"
  description = "Items that ended dead_lettered (log lines with jsonPayload.state=dead_lettered)."
  filter      = "${local.function_logs}jsonPayload.state=\"dead_lettered\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
}

# ERROR and CRITICAL lines of the three functions (their own JSON lines on stdout/stderr), and
# Cloud Run's system log about their instances (out of memory, a crash: varlog/system).
# Cloud Run also writes a request log entry per request, at ERROR for every 5xx
# (https://cloud.google.com/run/docs/logging: request, container and system logs; log names
# run.googleapis.com%2Frequests, %2Fstdout, %2Fstderr, %2Fvarlog%2Fsystem per
# https://cloud.google.com/chronicle/docs/ingestion/parser-list/gcp-run-changelog). The worker
# answers 503 to hand a message back to Pub/Sub, routine under quota pressure, so request log
# entries are left out: an unhandled failure behind a 5xx logs its own ERROR line, counted here.
# A worker that fails every delivery also shows in the backlog and dead-letter alerts.
resource "google_logging_metric" "function_errors" {
  name        = "${var.name_prefix}-function-errors"
  description = "ERROR lines logged by the imagefleet functions, and Cloud Run errors about their instances (request logs excluded)."
  filter      = <<-EOT
    ${local.function_logs}
    severity>=ERROR
    NOT logName:"run.googleapis.com%2Frequests"
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
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"${local.metric_types["worker_quota_exceeded"]}\""
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
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"${local.metric_types["function_errors"]}\""
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
    display_name = "Items dead-lettered"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"${local.metric_types["items_dead_lettered"]}\""
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
  filter      = "${local.function_logs}jsonPayload.alert:*"

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
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"${local.metric_types["usage_alerts"]}\" AND metric.label.alert != \"breaker_closed\" AND metric.label.alert != \"breaker_half_open\" AND metric.label.alert != \"model_restored\""
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
