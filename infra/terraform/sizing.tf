# Sizing of the interactive lane from one number, the model's request quota per minute
# (var.model_requests_per_minute), by Little's law: requests in flight = arrival rate x time in
# the system. docs/deploying.md explains the formulas and lists the values for 10, 60, 300 and
# 1,000 requests per minute. Every derived value can be overridden by its own variable (null
# means "derive it"). Only variables and locals live in this file, so a test can evaluate it
# with `terraform console` and no providers (tests/unit/test_terraform.py).

locals {
  # RATE_LIMIT_REQUESTS / RATE_LIMIT_IMAGES: the quota per RATE_WINDOW_SECONDS. One image per
  # request, so both follow the request quota unless set.
  derived_rate_limit  = floor(var.model_requests_per_minute * var.rate_window_seconds / 60)
  rate_limit_requests = coalesce(var.rate_limit_requests, local.derived_rate_limit)
  rate_limit_images   = coalesce(var.rate_limit_images, local.derived_rate_limit)

  # RATE_CONCURRENCY: calls in flight when requests arrive at the quota and each takes
  # model_latency_seconds (L = lambda x W). Fewer would leave quota unused; more is not needed,
  # since the rate limit caps the starts anyway.
  derived_concurrency = ceil(var.model_requests_per_minute / 60 * var.model_latency_seconds)
  rate_concurrency    = coalesce(var.rate_concurrency, local.derived_concurrency)

  # Deliveries in flight (worker instances x per-instance concurrency): the calls in flight plus
  # a quarter for deliveries waiting on the limiter, so a freed lease is taken at once. More
  # would only wait MAX_WAIT_SECONDS and hand their messages back. RATE_CONCURRENCY = 0 means
  # unlimited, which sizes nothing: the derived figure is used then.
  sized_concurrency = local.rate_concurrency > 0 ? local.rate_concurrency : local.derived_concurrency
  worker_slots      = local.sized_concurrency + ceil(local.sized_concurrency / 4)

  # A delivery mostly waits on Gemini, so one vCPU serves several; 8 per instance keeps an
  # instance's memory (a few decoded images) and its share of a crash small.
  worker_concurrency   = coalesce(var.worker_concurrency, min(8, local.worker_slots))
  worker_max_instances = coalesce(var.worker_max_instances, ceil(local.worker_slots / local.worker_concurrency))
}
