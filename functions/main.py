"""Cloud Functions entry points. They translate transports to use cases and nothing else.

  http_api          the public HTTP API (jobs in, status out)
  pubsub_worker     one Pub/Sub message = one image, delivered as a CloudEvent
  scheduled_poller  called by Cloud Scheduler: reconciles work that needs a nudge; also pushed
                    one batch at a time by the batch-nudges subscription
  gemini_webhook    Gemini's batch webhooks: public, authenticated by their signature
"""
from __future__ import annotations

import base64
import logging
import uuid

import functions_framework
from werkzeug.exceptions import NotFound as RouteNotFound

import http_api as api
import logs
import wiring
from adapters.pubsub_queue import decode_work_message
from core import worker
from core.poller import poll_once

logs.configure()
log = logging.getLogger("imagefleet")
# Build this instance's clients now, in the background, rather than on its first request.
wiring.start_warm_up()


@functions_framework.http
def http_api(request):
    wiring.wait_for_warm_up()
    return api.handle(request)


functions_framework.errorhandler(RouteNotFound)(api.framework_not_found)  # not an entry point


@functions_framework.cloud_event
def pubsub_worker(cloud_event):
    wiring.wait_for_warm_up()
    message = (cloud_event.data or {}).get("message") or {}
    message_id = message.get("messageId") or message.get("message_id")
    try:
        job_id, key = decode_work_message(base64.b64decode(message.get("data") or b""))
    except ValueError as e:
        # A message we cannot read can never succeed: log it with its id and drop it.
        log.error("dropping unreadable message %s: %s", message_id, e, extra={"message_id": message_id})
        return
    owner = f"{wiring.instance_id()}-{uuid.uuid4().hex[:8]}"  # this delivery's leases
    outcome = worker.process_item(wiring.worker_deps(), job_id, key, owner)
    if not outcome.ack:
        log.warning("item %s/%s handed back to Pub/Sub: %s", job_id, key, outcome.reason,
                    extra={"job_id": job_id, "item_key": key, "lane": "interactive", "state": outcome.state})
        raise api.RetryLater(f"{job_id}/{key}: {outcome.reason}")
    log.info("item %s/%s: %s %s", job_id, key, outcome.state, outcome.reason,
             extra={"job_id": job_id, "item_key": key, "lane": "interactive", "state": outcome.state})


@functions_framework.http
def scheduled_poller(request):
    """One Cloud Scheduler tick (core/poller.py). POST only, as Cloud Scheduler sends it: a GET
    (a health check, a crawler, a browser) must not run a tick."""
    if request.method != "POST":
        return api.error_response(api.ApiError(405, "method_not_allowed", "the poller runs on POST only"),
                                  {"Allow": "POST"})
    wiring.wait_for_warm_up()
    envelope = request.get_json(silent=True)
    if isinstance(envelope, dict) and "message" in envelope:
        return api.poller_nudge(envelope["message"])  # the batch-nudges push subscription, not the scheduler
    return api.json_response(poll_once(wiring.poller_deps(), wiring.poller_policy(), wiring.instance_id()))


@functions_framework.http
def gemini_webhook(request):
    """Gemini POSTs batch events here (core/gemini_webhooks.py). A function of its own: Gemini
    sends no Google identity token, so this one is public, and its signature check is its
    authentication; the API and the poller stay behind IAM."""
    wiring.wait_for_warm_up()
    return api.gemini_webhook(request)
