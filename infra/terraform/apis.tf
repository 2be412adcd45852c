# Every API the stack calls, and only those. Each resource that needs one depends on this set
# (directly, or through a resource that does), so a first apply never races an enablement.
#
#   artifactregistry   the build repository (functions.tf)
#   cloudbuild         Cloud Functions gen2 builds the functions with Cloud Build
#   cloudfunctions     the three gen2 functions
#   cloudresourcemanager  project-level IAM grants (google_project_iam_member) and the
#                      project number (iam.tf)
#   cloudscheduler     the poller's schedule
#   firestore          the (default) database, its TTL policies and index exemptions
#   iam                the service accounts and the grants on them
#   logging            log-based metrics (and the build logs)
#   monitoring         alert policies
#   pubsub             topics, subscriptions, the Pub/Sub service agent
#   run                gen2 functions run as Cloud Run services; their invoker grants
#   secretmanager      the Gemini key, the webhook secret, the optional API keys
#   storage            the images and source buckets
#
# Not here: eventarc (no function has an event trigger: the worker is fed by our own push
# subscription, pubsub.tf); serviceusage, which must already be on to enable the others (it is
# on in new projects); generativelanguage, which is enabled on the project that owns the Gemini
# API key, not necessarily this one.
locals {
  services = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "this" {
  for_each = local.services

  project = var.project_id
  service = each.value
  # Leave the APIs on when this stack is destroyed: other things in the project may use them.
  disable_on_destroy = false
}
