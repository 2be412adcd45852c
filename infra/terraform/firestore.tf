# The (default) database: functions/wiring.py builds firestore.Client(project=...) without a
# database id. If the project already has one, import it instead of creating it:
#   terraform import google_firestore_database.main "projects/<project>/databases/(default)"
#
# Every query the functions make (functions/adapters/firestore/) is one equality or
# `in` filter, or one order_by, on a single field of one collection (items by state or by
# index, jobs by published or status in id order, batches by job_id, state, gemini_batch or a
# next_check_at range in next_check_at then id order, slots by seq, leases by an expires_at
# range, events by job_id or by a next_attempt_at range; adapters/firestore/events.py), which
# Firestore's automatic single-field indexes answer (every index ends with the document id);
# except the poller's sweep of stuck items (items_stale_* below).
resource "google_firestore_database" "main" {
  project     = var.project_id
  name        = "(default)"
  location_id = coalesce(var.firestore_location, var.region)
  type        = "FIRESTORE_NATIVE"

  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.firestore_delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  # `terraform destroy` forgets the database rather than deleting the jobs in it.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.this]
}

# ratelimit/{model}/slots/{n}: the chain of blocks of send slots, one create-only document per
# block (about one a second per busy worker instance), never read again once its time has passed. The TTL policy deletes each one
# after its expire_at. The field is also exempt from indexing: nothing queries it, and
# monotonically increasing timestamps in an index are a write hotspot.
resource "google_firestore_field" "slot_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "slots"
  field      = "expire_at"

  ttl_config {}
  index_config {}
}

# Single-field exemptions for large values nothing queries: they only cost index writes.
# Field index changes are applied one at a time per database, hence the depends_on chain.

# jobs/{id}/items/{key}.prompt: up to MAX_PROMPT_CHARS characters, 10,000 items per job.
# Idempotency-Key records: kept a day (IDEMPOTENCY_TTL_SECONDS), then deleted by TTL.
resource "google_firestore_field" "idempotency_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "idempotency"
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_field.slot_expiry]
}

resource "google_firestore_field" "item_prompt" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "items"
  field      = "prompt"

  index_config {}

  depends_on = [google_firestore_field.idempotency_expiry]
}

# batches/{intent}.keys: an array of up to BATCH_MAX_REQUESTS item keys, one array-contains
# index entry each.
resource "google_firestore_field" "intent_keys" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "batches"
  field      = "keys"

  index_config {}

  depends_on = [google_firestore_field.item_prompt]
}

# ---------------------------------------------------------------------------------------------
# Retention: TTL policies on every collection that grows with use, on a Timestamp field named
# expire_at. A TTL policy names a collection group (every collection of that id, top-level or
# nested: https://cloud.google.com/firestore/docs/ttl; google_firestore_field's `collection` is
# the collection group id), and Firestore deletes a document typically within 24 hours after
# its expire_at; a document without the field, or with a value that is not a Timestamp, is
# never deleted. Deleting a document leaves its subcollections in place
# (https://cloud.google.com/firestore/docs/manage-data/delete-data), so jobs and their items,
# usage days and their shards each need their own policy. Which document gets expire_at, and
# when, is listed in README.md ("Retention"); the functions read RECORDS_RETENTION_DAYS to write
# it. Each expire_at is also exempt from indexing: nothing queries it, and an index on
# increasing timestamps is a write hotspot. Field changes are applied one at a time per
# database, hence the depends_on chain.
# ---------------------------------------------------------------------------------------------

locals {
  # Merged into every function's environment (functions.tf).
  retention_env = {
    RECORDS_RETENTION_DAYS = var.records_retention_days
  }
}

# jobs/{id}: the job.
resource "google_firestore_field" "job_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "jobs"
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_field.intent_keys]
}

# jobs/{id}/items/{key}: one per image, up to MAX_ITEMS_PER_JOB per job.
resource "google_firestore_field" "item_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "items"
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_field.job_expiry]
}

# batches/{intent}: the batch intents of the batch lane.
resource "google_firestore_field" "intent_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "batches"
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_field.item_expiry]
}

# events/{event_id}: the completion events' outbox.
resource "google_firestore_field" "event_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "events"
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_field.intent_expiry]
}

# pool/{job_id}~{key}: the pending-batch pool; removed when batched, so this only clears the
# entries of items that never were (a cancelled job).
resource "google_firestore_field" "pool_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "pool"
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_field.event_expiry]
}

# usage/{day}/shards/{n}: the daily counters (a new set of shards every day).
resource "google_firestore_field" "usage_shard_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "shards"
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_field.pool_expiry]
}

# jobs/{id}/item_counts/{n}: a job's item counts by state, a few shards per job.
resource "google_firestore_field" "item_count_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "item_counts"
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_field.usage_shard_expiry]
}

# The poller's sweep of stuck interactive items (core/redrive.py redrive_stuck_items): a query over
# the items of every job (collection group "items") with equalities on lane and state and a
# range on lease_expires_at or updated_at. Collection-group scope and several fields need
# composite indexes: automatic single-field indexes are collection-scoped only
# (https://cloud.google.com/firestore/docs/concepts/index-overview).
resource "google_firestore_index" "items_stale_leases" {
  project     = var.project_id
  database    = google_firestore_database.main.name
  collection  = "items"
  query_scope = "COLLECTION_GROUP"

  fields {
    field_path = "lane"
    order      = "ASCENDING"
  }
  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "lease_expires_at"
    order      = "ASCENDING"
  }

  # After the field changes, which this database applies one at a time.
  depends_on = [google_firestore_field.item_count_expiry]
}

resource "google_firestore_index" "items_stale_queued" {
  project     = var.project_id
  database    = google_firestore_database.main.name
  collection  = "items"
  query_scope = "COLLECTION_GROUP"

  fields {
    field_path = "lane"
    order      = "ASCENDING"
  }
  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "updated_at"
    order      = "ASCENDING"
  }

  depends_on = [google_firestore_index.items_stale_leases]
}
