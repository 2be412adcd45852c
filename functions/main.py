"""Cloud Functions entry points (placeholder while the skeleton is being built)."""
import functions_framework


@functions_framework.http
def http_api(request):
    return {"status": "ok"}


@functions_framework.cloud_event
def pubsub_worker(cloud_event):
    return None


@functions_framework.http
def scheduled_poller(request):
    return {"status": "ok"}
