# Images and manifests: {job_id}/{key}.png and {job_id}/manifest.jsonl.
resource "google_storage_bucket" "images" {
  #checkov:skip=CKV_GCP_62:Object access is audited with Cloud Audit Logs (Data Access, a project-wide setting), not a legacy usage-log bucket.
  #checkov:skip=CKV_GCP_78:Versioning adds nothing: objects are create-only (if_generation_match=0) under names fixed by job and key, so none is ever overwritten.
  name     = "${var.project_id}-${var.name_prefix}-images"
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Off on purpose: objects are create-only and named by job and key, never overwritten.
  versioning {
    enabled = false
  }

  lifecycle_rule {
    condition {
      age = var.images_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  # The parts a long manifest is composed from (functions/core/manifests.py): the functions
  # may not delete objects, so the parts expire here, a day after the manifest was written.
  # matches_prefix: https://cloud.google.com/java/docs/reference/google-cloud-storage/latest/com.google.storage.v2.Bucket.Lifecycle.Rule.Condition.Builder
  lifecycle_rule {
    condition {
      age            = 1
      matches_prefix = ["_manifest-parts/"]
    }
    action {
      type = "Delete"
    }
  }

  # Staged request bodies (_accepted/{job_id}.jsonl, functions/core/expanding.py): the poller
  # deletes each once its job has left accepting; this deletes any it could not (a kill just
  # before the delete, a failed call). Its age must exceed the longest expansion: a million
  # items at Firestore's 500/s ramp take under an hour, and one that cannot progress fails
  # after EXPAND_MAX_ATTEMPTS (about 45 minutes); the default, 7 days, is far beyond both.
  lifecycle_rule {
    condition {
      age            = var.staged_bodies_retention_days
      matches_prefix = ["_accepted/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.this]
}

# The functions' source archives, one object per content hash (functions.tf).
resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Object access is audited with Cloud Audit Logs (Data Access, a project-wide setting), not a legacy usage-log bucket.
  #checkov:skip=CKV_GCP_78:Each archive is named by its content hash and never overwritten; Terraform replaces it on change.
  name     = "${var.project_id}-${var.name_prefix}-source"
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  versioning {
    enabled = false
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.this]
}

# Job sources: prompt files too big for one request, uploaded by the CLI under the sha256 of
# their content and read by the functions (POST /v1/jobs {"source": "gs://..."}). The only bucket
# in SOURCE_BUCKETS unless var.extra_source_buckets adds the callers' own.
resource "google_storage_bucket" "job_sources" {
  #checkov:skip=CKV_GCP_62:Object access is audited with Cloud Audit Logs (Data Access, a project-wide setting), not a legacy usage-log bucket.
  #checkov:skip=CKV_GCP_78:Uploads are create-only under the sha256 of their content, so no object is ever overwritten; a job reads the generation it was accepted with.
  name     = "${var.project_id}-${var.name_prefix}-job-sources"
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = false
  }

  # An upload is read while its job expands (minutes): keep it a few days, then let it go.
  lifecycle_rule {
    condition {
      age = var.job_sources_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.this]
}
