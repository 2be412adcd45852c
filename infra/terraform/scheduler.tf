# Calls scheduled_poller on a schedule, with an OIDC token of the scheduler's identity (the
# poller is private and internal-only; Cloud Scheduler in the project counts as internal).
# Overlapping calls are safe: the poller leases every batch it works on.
resource "google_cloud_scheduler_job" "poller" {
  name        = "${var.name_prefix}-poller"
  region      = var.region
  description = "Ticks scheduled_poller: republishes stalled jobs, drives and ingests Gemini batches."
  schedule    = var.poller_schedule
  time_zone   = var.poller_time_zone
  # Wait for the whole call: it stops starting work after POLLER_BUDGET_SECONDS.
  attempt_deadline = "${var.poller_timeout_seconds}s"

  # One quick retry of a failed tick (a cold start, a deploy); the next tick comes anyway.
  retry_config {
    retry_count          = 1
    min_backoff_duration = "10s"
    max_backoff_duration = "30s"
    max_doublings        = 1
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.poller.service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.poller.service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_service_iam_member.poller_invoker_scheduler]
}
