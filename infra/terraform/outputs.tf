output "api_url" {
  description = "URL of http_api. It is private: call it with an identity token of a principal in api_invoker_members."
  value       = google_cloudfunctions2_function.api.service_config[0].uri
}

output "api_call_example" {
  description = "How to call the API with your own identity (needs roles/run.invoker on the API's service)."
  value       = "curl -H \"Authorization: Bearer $(gcloud auth print-identity-token)\" ${google_cloudfunctions2_function.api.service_config[0].uri}/healthz"
}

output "worker_url" {
  description = "URL of pubsub_worker (internal: reached only by the push subscription)."
  value       = google_cloudfunctions2_function.worker.service_config[0].uri
}

output "poller_url" {
  description = "URL of scheduled_poller (internal: reached only by Cloud Scheduler)."
  value       = google_cloudfunctions2_function.poller.service_config[0].uri
}

output "gemini_webhook_url" {
  description = "URL of gemini_webhook: the uri registered with Gemini (tools/register_gemini_webhook.py)."
  value       = google_cloudfunctions2_function.gemini_webhook.service_config[0].uri
}

output "images_bucket" {
  description = "Bucket of the images and manifests: gs://<bucket>/<job_id>/<key>.png."
  value       = google_storage_bucket.images.name
}

output "job_sources_bucket" {
  description = "Bucket for prompt files too big for one request: imagefleet submit --source-bucket gs://<bucket>."
  value       = google_storage_bucket.job_sources.name
}

output "source_reader_accounts" {
  description = "Service accounts that read job sources: grant them roles/storage.objectViewer on a bucket listed in extra_source_buckets."
  value       = [google_service_account.api.email, google_service_account.poller.email]
}

output "work_topic" {
  description = "Topic of the interactive lane."
  value       = google_pubsub_topic.work.name
}

output "dead_letter_subscription" {
  description = "Pull subscription on the dead-letter topic, for inspection."
  value       = google_pubsub_subscription.dead_letter.name
}

output "gemini_api_key_secret" {
  description = "Secret that holds the Gemini API key; add its value with the command in add_api_key_command."
  value       = google_secret_manager_secret.gemini_api_key.secret_id
}

output "add_api_key_command" {
  description = "Adds the Gemini API key as a new secret version, outside Terraform."
  value       = "printf %s \"$GEMINI_API_KEY\" | gcloud secrets versions add ${google_secret_manager_secret.gemini_api_key.secret_id} --project ${var.project_id} --data-file=-"
}

output "events_topic" {
  description = "Topic of the job.completed events."
  value       = google_pubsub_topic.events.name
}

output "events_subscription" {
  description = "Example pull subscription on the events topic."
  value       = google_pubsub_subscription.events_example.name
}

output "webhook_secret" {
  description = "Secret that holds the webhook signing secret; add its value with the command in add_webhook_secret_command."
  value       = google_secret_manager_secret.webhook_secret.secret_id
}

output "add_webhook_secret_command" {
  description = "Generates a webhook signing secret and adds it as a new secret version, outside Terraform."
  value       = "printf 'whsec_%s' \"$(openssl rand -base64 32)\" | gcloud secrets versions add ${google_secret_manager_secret.webhook_secret.secret_id} --project ${var.project_id} --data-file=-"
}

output "interactive_lane_sizing" {
  description = "The rate limits and worker sizes in effect, derived from model_requests_per_minute unless overridden (sizing.tf, docs/deploying.md)."
  value = {
    rate_limit_requests  = local.rate_limit_requests
    rate_limit_images    = local.rate_limit_images
    rate_concurrency     = local.rate_concurrency
    worker_concurrency   = local.worker_concurrency
    worker_max_instances = local.worker_max_instances
  }
}
