"""Offline checks of the job sources bucket in infra/terraform: who may read it, what the
functions are told, and how long uploads stay."""
from __future__ import annotations

from tests.unit.test_terraform import (
    account_of, app_functions, default, env_of, function_named, refers_to, resources,
)


def bucket_grants(bucket: str) -> list[dict]:
    return [m for m in resources()["google_storage_bucket_iam_member"].values()
            if refers_to(m["bucket"], "google_storage_bucket", bucket)]


def test_only_the_api_and_the_poller_read_job_sources_and_callers_may_only_create():
    grants = bucket_grants("job_sources")
    readers = {m["member"] for m in grants if m["role"] == "roles/storage.objectViewer"}
    expected = {account_of(function_named(ep)[1]) for ep in ("http_api", "scheduled_poller")}
    assert {r.split(".")[1] for r in readers} == expected
    assert {m["role"] for m in grants} == {"roles/storage.objectViewer", "roles/storage.objectCreator"}
    [uploaders] = [m for m in grants if m["role"] == "roles/storage.objectCreator"]
    assert uploaders["member"] == "${each.value}" and default("job_source_uploaders") == []


def test_every_function_is_told_the_job_sources_bucket_and_no_images_bucket():
    for name, function in app_functions().items():
        value = env_of(function)["SOURCE_BUCKETS"]
        assert refers_to(value, "google_storage_bucket", "job_sources"), name
        assert not refers_to(value, "google_storage_bucket", "images"), name
    assert default("extra_source_buckets") == []


def test_the_job_sources_bucket_is_private_and_forgets_uploads():
    bucket = resources()["google_storage_bucket"]["job_sources"]
    assert bucket["uniform_bucket_level_access"] is True and bucket["public_access_prevention"] == "enforced"
    assert bucket["versioning"][0]["enabled"] is False
    ages = {rule["action"][0]["type"]: rule["condition"][0]["age"] for rule in bucket["lifecycle_rule"]}
    assert ages["Delete"] == "${var.job_sources_retention_days}" and default("job_sources_retention_days") == 7
