terraform {
  required_version = ">= 1.6"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 6.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.4"
    }
    # time_sleep (monitoring.tf): wait for new log-based metrics before alerting on them.
    time = {
      source  = "hashicorp/time"
      version = "~> 0.12"
    }
  }

  # State is local by default. For a shared deployment, keep it in a bucket:
  #   terraform init -backend-config="bucket=<state-bucket>" -backend-config="prefix=imagefleet"
  # after adding `backend "gcs" {}` here.
}

provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = merge({ app = var.name_prefix }, var.labels)
}

# Only for google_project_service_identity (the Pub/Sub service agent), which is beta.
provider "google-beta" {
  project        = var.project_id
  region         = var.region
  default_labels = merge({ app = var.name_prefix }, var.labels)
}
