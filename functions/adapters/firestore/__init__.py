"""The Firestore adapters, one module per store (each names the collections it owns);
common.py holds the compare-and-set, snapshot and timestamp helpers they share.

Layout:
  jobs/{job_id}                       the job (written at submit and at a few transitions)
  jobs/{job_id}/items/{item_key}      one document per image: each is written by one worker at a
                                      time, so no document sees more than a few writes per second
  jobs/{job_id}/item_counts/{n}       the job's item counts by state, in COUNT_SHARDS shards
                                      (core/item_counts.py), changed with every item state change
  batches/{intent_id}                 one batch intent: recorded before the Gemini batch exists
  ratelimit/{limiter_id}              blocked_until, written only when a 429 pushes everyone back
  ratelimit/{limiter_id}/slots/{n}    the chain of blocks of send slots, create-only (TTL on expire_at)
  ratelimit/{limiter_id}/leases/{i}   the concurrency leases
  breakers/{breaker_id}               the circuit breaker (written on transitions and 429s only)
  usage/{day}/shards/{n}              daily counters, sharded: increments spread over n documents
  pool/{job_id}~{key}                 the pending-batch pool's index of diverted items
  idempotency/{key_id}                Idempotency-Key records (TTL on expires_at)

Every document of a collection that grows with use carries expire_at, a Timestamp that the
TTL policies of infra/terraform/firestore.tf act on: RETENTION_DAYS (RECORDS_RETENTION_DAYS)
after the job's submission for a job, its items, counts, intents and events.
"""
