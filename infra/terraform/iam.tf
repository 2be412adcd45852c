# One identity per function, one for the scheduler's calls, one for Pub/Sub's pushes and one
# for the builds. Each gets only what its code uses, granted on the resource (*_iam_member:
# additive, never *_iam_binding or *_iam_policy, which would take over the resource's whole
# policy). What the code uses was read from functions/: see the comment on each grant.

resource "google_service_account" "api" {
  account_id   = "${var.name_prefix}-api"
  display_name = "${var.name_prefix} http_api"
  depends_on   = [google_project_service.this]
}

resource "google_service_account" "worker" {
  account_id   = "${var.name_prefix}-worker"
  display_name = "${var.name_prefix} pubsub_worker"
  depends_on   = [google_project_service.this]
}

resource "google_service_account" "poller" {
  account_id   = "${var.name_prefix}-poller"
  display_name = "${var.name_prefix} scheduled_poller"
  depends_on   = [google_project_service.this]
}

resource "google_service_account" "scheduler" {
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "${var.name_prefix} Cloud Scheduler -> scheduled_poller"
  depends_on   = [google_project_service.this]
}

resource "google_service_account" "push" {
  account_id   = "${var.name_prefix}-push"
  display_name = "${var.name_prefix} Pub/Sub push -> pubsub_worker"
  depends_on   = [google_project_service.this]
}

resource "google_service_account" "build" {
  account_id   = "${var.name_prefix}-build"
  display_name = "${var.name_prefix} Cloud Build of the functions"
  depends_on   = [google_project_service.this]
}

# ---------------------------------------------------------------------------------------------
# Firestore: roles/datastore.user for the three functions. Firestore has no per-collection
# IAM; the project (or an IAM condition on the database) is the narrowest level, and this
# stack owns the project's (default) database. All three read and write jobs, items and
# batches; the worker also the limiter's slots and leases.
# ---------------------------------------------------------------------------------------------

resource "google_project_iam_member" "api_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.api.email}"
}

resource "google_project_iam_member" "worker_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_project_iam_member" "poller_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.poller.email}"
}

# ---------------------------------------------------------------------------------------------
# Cloud Storage: objectCreator + objectViewer on the images bucket, nothing else. Every write is
# GcsImageSink._create, an upload with if_generation_match=0 (create only): the API writes the
# manifest of a job it cancels (core/jobs.py cancel_job), the worker images and manifests, the
# poller ingested images and manifests. A duplicate delivery or a retry after a crash uploads
# to a name that already exists. Cloud Storage lists storage.objects.delete beside
# storage.objects.create for an upload over an existing name
# (https://cloud.google.com/storage/docs/access-control/iam-json, objects.insert;
# https://cloud.google.com/storage/docs/access-control/iam-xml, POST object), so without delete
# that upload may be refused with 403 instead of the 412 of a failed precondition
# (https://cloud.google.com/storage/docs/request-preconditions). The sink then reads the
# existing object's metadata (storage.objects.get) and treats an object with the same content
# as written: objectViewer gives that get. No role here can delete or overwrite an object, and
# storage.objects.list (also in objectViewer) only names objects of this one bucket.
# ---------------------------------------------------------------------------------------------

resource "google_storage_bucket_iam_member" "api_images" {
  bucket = google_storage_bucket.images.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.api.email}"
}

resource "google_storage_bucket_iam_member" "api_images_read" {
  bucket = google_storage_bucket.images.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.api.email}"
}

resource "google_storage_bucket_iam_member" "worker_images" {
  bucket = google_storage_bucket.images.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_storage_bucket_iam_member" "worker_images_read" {
  bucket = google_storage_bucket.images.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_storage_bucket_iam_member" "poller_images" {
  bucket = google_storage_bucket.images.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.poller.email}"
}

resource "google_storage_bucket_iam_member" "poller_images_read" {
  bucket = google_storage_bucket.images.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.poller.email}"
}

# The one delete: the poller, which expands accepted jobs, deletes a job's staged body
# (_accepted/{job_id}.jsonl, core/expanding.py) once the job has left accepting. The condition
# names that prefix only, so no image or manifest can be deleted
# (https://cloud.google.com/storage/docs/samples/storage-add-bucket-conditional-iam-binding;
# the bucket has uniform bucket-level access, which IAM conditions require:
# https://cloud.google.com/storage/docs/access-control/iam#conditions). A body left behind is
# deleted by the bucket's lifecycle rule on the same prefix (storage.tf).
resource "google_storage_bucket_iam_member" "poller_staged_delete" {
  bucket = google_storage_bucket.images.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.poller.email}"
  condition {
    title       = "staged-bodies-only"
    description = "Objects under _accepted/ only: the staged bodies of accepted jobs"
    expression  = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.images.name}/objects/_accepted/\")"
  }
}

# Job sources: the API reads an object's generation and size when it accepts a job with a
# `source`, the poller reads the file while it expands the job. objectViewer (get and list) on
# that one bucket; the worker never reads sources. Callers upload with objectCreator only: it
# holds neither storage.objects.get nor storage.objects.list
# (https://cloud.google.com/storage/docs/access-control/iam-roles), so a caller can neither read
# nor find another caller's prompt file (an object's name is the sha256 of its content).
resource "google_storage_bucket_iam_member" "api_job_sources" {
  bucket = google_storage_bucket.job_sources.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.api.email}"
}

resource "google_storage_bucket_iam_member" "poller_job_sources" {
  bucket = google_storage_bucket.job_sources.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.poller.email}"
}

resource "google_storage_bucket_iam_member" "job_source_uploaders" {
  for_each = toset(var.job_source_uploaders)
  bucket   = google_storage_bucket.job_sources.name
  role     = "roles/storage.objectCreator"
  member   = each.value
}

# ---------------------------------------------------------------------------------------------
# Pub/Sub: the API publishes a job's items; the poller republishes jobs whose publishing was
# interrupted (core/redrive.py reconcile_unpublished). The worker never publishes.
# ---------------------------------------------------------------------------------------------

resource "google_pubsub_topic_iam_member" "api_publisher" {
  topic  = google_pubsub_topic.work.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.api.email}"
}

resource "google_pubsub_topic_iam_member" "poller_publisher" {
  topic  = google_pubsub_topic.work.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.poller.email}"
}

# ---------------------------------------------------------------------------------------------
# The Gemini API key: all three call Gemini (API: batch creation; worker: generateContent;
# poller: batches, files), granted on the one secret.
# ---------------------------------------------------------------------------------------------

resource "google_secret_manager_secret_iam_member" "api" {
  secret_id = google_secret_manager_secret.gemini_api_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.api.email}"
}

resource "google_secret_manager_secret_iam_member" "worker" {
  secret_id = google_secret_manager_secret.gemini_api_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_secret_manager_secret_iam_member" "poller" {
  secret_id = google_secret_manager_secret.gemini_api_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.poller.email}"
}

# ---------------------------------------------------------------------------------------------
# Invokers. http_api is private: no allUsers, only var.api_invoker_members. The worker is
# invoked by Pub/Sub's push identity, the poller by the scheduler's.
# ---------------------------------------------------------------------------------------------

resource "google_cloud_run_service_iam_member" "api_invokers" {
  for_each = toset(var.api_invoker_members)

  location = google_cloudfunctions2_function.api.location
  service  = google_cloudfunctions2_function.api.name
  role     = "roles/run.invoker"
  member   = each.value
}

resource "google_cloud_run_service_iam_member" "worker_invoker_push" {
  location = google_cloudfunctions2_function.worker.location
  service  = google_cloudfunctions2_function.worker.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push.email}"
}

resource "google_cloud_run_service_iam_member" "poller_invoker_scheduler" {
  location = google_cloudfunctions2_function.poller.location
  service  = google_cloudfunctions2_function.poller.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

# Pub/Sub's service agent mints the push identity's OIDC tokens. Needed on projects made
# before April 2021; harmless after. Granted on the one service account, not the project.
resource "google_service_account_iam_member" "push_token_creator" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_project_service_identity.pubsub.email}"
}

# ---------------------------------------------------------------------------------------------
# The build service account. Projects made since mid-2024 no longer give the default build
# identity broad roles, so builds run as this account, with the roles the Cloud Run "build
# service account" page lists for function builds (Logs Writer, Artifact Registry Writer, and
# Storage object access to the source:
# https://cloud.google.com/run/docs/configuring/services/build-service-account), each on the one
# resource it is for:
#   logging.logWriter        project: build logs (logs have no narrower level)
#   artifactregistry.writer  our build repository only
#   storage.objectViewer     the function source only: our source bucket, and the bucket
#       gcf-v2-sources-<project number>-<region> into which Cloud Functions copies it and from
#       which the build fetches it ("failed to download archive gs://gcf-v2-sources-...: You must
#       grant Storage Object Viewer permission to <build account>":
#       https://github.com/hashicorp/terraform-provider-google/issues/20571). That bucket is
#       created by the first deploy, so it cannot be granted on before it exists: the grant is
#       made on the project with an IAM condition that names that one bucket and its objects
#       (resource.name is projects/_/buckets/<bucket>[/objects/<object>] for Cloud Storage:
#       https://cloud.google.com/iam/docs/conditions-resource-attributes#resource-name). The
#       builds can read no other bucket, so not the generated images.
# That page asks for Storage Object Admin; the build only fetches the source (its images go to
# Artifact Registry), and the failure above names Storage Object Viewer, so only that is granted.
# ---------------------------------------------------------------------------------------------

# The project number names the sources bucket. Read after the APIs are on, since it needs the
# Resource Manager API.
data "google_project" "this" {
  project_id = var.project_id
  depends_on = [google_project_service.this]
}

locals {
  function_sources_bucket = "gcf-v2-sources-${data.google_project.this.number}-${var.region}"
}

resource "google_project_iam_member" "build_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.build.email}"
}

resource "google_project_iam_member" "build_function_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = "serviceAccount:${google_service_account.build.email}"

  condition {
    title       = "function sources only"
    description = "The bucket Cloud Functions copies the function source into, and its objects."
    expression  = "resource.name == \"projects/_/buckets/${local.function_sources_bucket}\" || resource.name.startsWith(\"projects/_/buckets/${local.function_sources_bucket}/objects/\")"
  }
}

resource "google_storage_bucket_iam_member" "build_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.build.email}"
}

resource "google_artifact_registry_repository_iam_member" "build_writer" {
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.build.email}"
}

# Only the API reads its own keys. The API function depends on this grant (functions.tf): a
# function whose identity cannot read a secret it mounts fails to deploy.
resource "google_secret_manager_secret_iam_member" "api_keys" {
  count     = var.require_api_keys ? 1 : 0
  secret_id = google_secret_manager_secret.api_keys[0].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.api.email}"
}

# Grants are eventually consistent: a change to an allow policy typically takes effect within 2
# minutes, sometimes 7 or more (https://cloud.google.com/iam/docs/access-change-propagation).
# A function's build reads the source and pushes the image as the build account, and its first
# revision reads its secrets as its own account, moments after the grants are made; so the
# functions also wait grant_propagation_wait after them. `triggers` runs the wait again when a
# grant is replaced, and only then
# (https://registry.terraform.io/providers/hashicorp/time/latest/docs/resources/sleep).
resource "time_sleep" "grants_propagated" {
  create_duration = var.grant_propagation_wait

  triggers = {
    build_log_writer       = google_project_iam_member.build_log_writer.id
    build_function_sources = google_project_iam_member.build_function_sources.id
    build_source           = google_storage_bucket_iam_member.build_source.id
    build_writer           = google_artifact_registry_repository_iam_member.build_writer.id
    api_secret             = google_secret_manager_secret_iam_member.api.id
    worker_secret          = google_secret_manager_secret_iam_member.worker.id
    poller_secret          = google_secret_manager_secret_iam_member.poller.id
    api_webhook_secret     = google_secret_manager_secret_iam_member.api_webhook_secret.id
    worker_webhook_secret  = google_secret_manager_secret_iam_member.worker_webhook_secret.id
    poller_webhook_secret  = google_secret_manager_secret_iam_member.poller_webhook_secret.id
    api_keys               = join(",", google_secret_manager_secret_iam_member.api_keys[*].id)
    gemini_webhook_secret  = google_secret_manager_secret_iam_member.gemini_webhook_secret.id
    api_job_sources        = google_storage_bucket_iam_member.api_job_sources.id
    poller_job_sources     = google_storage_bucket_iam_member.poller_job_sources.id
  }
}
