# Calls scheduled_poller on a schedule, with an OIDC token of the scheduler's identity (the
# poller is private and internal-only; Cloud Scheduler in the project counts as internal).
#
# Ticks never overlap: Cloud Scheduler never allows two outstanding executions of a job; when an
# execution runs past the next scheduled time, the next one starts when it ends
# (https://cloud.google.com/python/docs/reference/cloudscheduler/2.4.0/google.cloud.scheduler_v1beta1.types.Job,
# `schedule`). An execution ends when the poller answers or at attempt_deadline, so the deadline
# is the function's own timeout: a tick is over (answered, or killed by Cloud Run) before the
# scheduler starts the next one or retries it. Hence one poller instance (poller_max_instances).
# The leases on batches, events and items still make a second caller safe (a manual
# `gcloud scheduler jobs run`, two revisions during a deploy), they are just not the normal case.
resource "google_cloud_scheduler_job" "poller" {
  name        = "${var.name_prefix}-poller"
  region      = var.region
  description = "Ticks scheduled_poller: republishes stalled jobs, drives and ingests Gemini batches."
  schedule    = var.poller_schedule
  time_zone   = var.poller_time_zone
  # Wait for the whole call: it starts no new work after POLLER_BUDGET_SECONDS and finishes the
  # step in flight within poller_tail_seconds (the precondition below).
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

  lifecycle {
    precondition {
      condition     = var.poller_timeout_seconds >= var.poller_budget_seconds + var.poller_tail_seconds
      error_message = "poller_timeout_seconds (the attempt deadline) must be at least poller_budget_seconds + poller_tail_seconds, or the scheduler gives up on ticks that are still working."
    }
    precondition {
      condition     = var.poller_tail_seconds >= 2 * var.webhook_timeout_seconds
      error_message = "poller_tail_seconds must cover a webhook POST started just before the budget ends: 2 x webhook_timeout_seconds."
    }
    precondition {
      # Cloud Scheduler accepts attempt deadlines from 15 seconds to 30 minutes for HTTP targets
      # (https://cloud.google.com/dotnet/docs/reference/Google.Cloud.Scheduler.V1/latest/Google.Cloud.Scheduler.V1.Job, AttemptDeadline).
      condition     = var.poller_timeout_seconds >= 15 && var.poller_timeout_seconds <= 1800
      error_message = "poller_timeout_seconds is also the scheduler's attempt deadline: 15 to 1800 seconds."
    }
  }

  depends_on = [google_cloud_run_service_iam_member.poller_invoker_scheduler]
}
