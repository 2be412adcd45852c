# The Gemini API key. Terraform creates the secret, never a version of it: the key is added
# outside Terraform, so it never lands in the state file or a plan:
#   printf %s "$GEMINI_API_KEY" | gcloud secrets versions add <secret_id> --data-file=-
# The functions read version "latest" when an instance starts (functions.tf).
resource "google_secret_manager_secret" "gemini_api_key" {
  secret_id = "${var.name_prefix}-gemini-api-key"

  replication {
    user_managed {
      replicas {
        location = var.region
      }
    }
  }

  depends_on = [google_project_service.this]
}

# Optional API keys for the HTTP API (X-API-Key), on top of the IAM invoker check: a
# comma-separated list in one secret, added outside Terraform like the Gemini key. Each entry
# is a plain key (tenant "default"), tenant=key, or admin:tenant=key (sees every tenant);
# functions/core/tenants.py reads it, and a malformed list stops the function at start:
#   printf %s "acme=$KEY_A,globex=$KEY_B,admin:ops=$KEY_OPS" | gcloud secrets versions add <secret_id> --data-file=-
# A new version takes effect as instances start (they read "latest").
resource "google_secret_manager_secret" "api_keys" {
  count     = var.require_api_keys ? 1 : 0
  secret_id = "${var.name_prefix}-api-keys"

  replication {
    user_managed {
      replicas {
        location = var.region
      }
    }
  }

  depends_on = [google_project_service.this]
}
