"""Offline checks of infra/terraform: the HCL parsed with python-hcl2 and held against functions/.

terraform validate needs the providers, which CI cannot download; these checks need nothing but
the files. They keep Terraform and the code from drifting apart: the entry points, the env var
names, the ack deadline against the worker's longest delivery, and the house rules on IAM and
secrets.
"""
from __future__ import annotations

import ast
import functools
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest
from hcl2.utils import SerializationOptions

from config import Settings

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "infra" / "terraform"
MAIN_PY = ROOT / "functions" / "main.py"
DEPLOYING_MD = ROOT / "docs" / "deploying.md"

# Variables a function may get beside the Settings fields, and who reads them.
RUNTIME_VARS = {
    "GEMINI_API_KEY": "google-genai (and Settings, to fingerprint batches)",
    "THREADS": "functions-framework: gunicorn threads per instance",
}

_OPTIONS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
_VAR_REF = re.compile(r"\$\{var\.(\w+)\}")


@functools.cache
def tf() -> dict[str, list]:
    """Every top-level block of every .tf file, merged by kind (resource, variable, locals...)."""
    merged: dict[str, list] = {}
    for path in sorted(TF_DIR.glob("*.tf")):
        with path.open() as f:
            for kind, blocks in hcl2.load(f, serialization_options=_OPTIONS).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def tf_text() -> str:
    return "\n".join(p.read_text() for p in sorted(TF_DIR.glob("*.tf")))


def resources(kind: str = "resource") -> dict[str, dict[str, dict]]:
    """{type: {name: body}} of the resources (or data sources)."""
    out: dict[str, dict[str, dict]] = {}
    for block in tf().get(kind, []):
        for rtype, named in block.items():
            out.setdefault(rtype, {}).update(named)
    return out


def variables() -> dict[str, dict]:
    return {name: body for block in tf().get("variable", []) for name, body in block.items()}


def locals_() -> dict:
    return {k: v for block in tf().get("locals", []) for k, v in block.items()}


def functions() -> dict[str, dict]:
    return resources()["google_cloudfunctions2_function"]


def resolve(value):
    """A literal, "${var.x}" replaced by the variable's default (when it has one), or
    "${local.x}" of sizing.tf replaced by its value for the default variables."""
    if isinstance(value, str) and (m := _VAR_REF.fullmatch(value)):
        return variables()[m.group(1)].get("default", value)
    if isinstance(value, str) and (m := re.fullmatch(r"\$\{local\.(\w+)\}", value)) and m.group(1) in SIZED:
        return sizing(default("model_requests_per_minute"), default("model_latency_seconds"),
                      default("rate_window_seconds"))[m.group(1)]
    return value


def default(name: str):
    return variables()[name]["default"]


def refers_to(value: str, rtype: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(rtype)}\.{re.escape(name)}\b", value) is not None


def env_of(function: dict) -> dict:
    """The function's environment_variables, with merge(local.x, {K = v}) expanded."""
    expr = function["service_config"][0]["environment_variables"]
    if isinstance(expr, dict):
        return expr
    env: dict = {}
    for name in re.findall(r"\blocal\.(\w+)", expr):
        value = locals_()[name]
        if isinstance(value, dict):
            env.update(value)
        else:  # a for-expression over a map literal: its upper-case keys
            env.update(dict(re.findall(r"\b([A-Z][A-Z0-9_]+)\s*=\s*([\w.]+)", value)))
    for inline in re.findall(r"\{([^{}]*)\}", expr.removeprefix("${").removesuffix("}")):
        env.update(dict(re.findall(r"(\w+)\s*=\s*([^,]+?)\s*(?:,|$)", inline)))
    return env


def entry_points_in_main() -> dict[str, str]:
    """{function name: "http" | "cloud_event"} for every @functions_framework.* in main.py."""
    found = {}
    for node in ast.parse(MAIN_PY.read_text()).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    and target.value.id == "functions_framework"):
                found[node.name] = target.attr
    return found


# The public receiver of Gemini's webhooks (gemini_webhooks.tf): no Gemini key, no events, no
# images; the tests about the three functions that do the work leave it out.
RECEIVER = "gemini_webhook"


def app_functions() -> dict[str, dict]:
    return {n: f for n, f in functions().items() if n != RECEIVER}


def function_named(entry_point: str) -> tuple[str, dict]:
    [(name, body)] = [(n, f) for n, f in functions().items()
                      if f["build_config"][0]["entry_point"] == entry_point]
    return name, body


# --- entry points -----------------------------------------------------------------------------

def test_every_entry_point_of_main_py_is_deployed_once_and_nothing_else():
    in_main = entry_points_in_main()
    deployed = [f["build_config"][0]["entry_point"] for f in functions().values()]

    assert sorted(deployed) == sorted(in_main)
    assert set(in_main) == {"http_api", "pubsub_worker", "scheduled_poller", "gemini_webhook"}
    assert {f["build_config"][0]["runtime"] for f in functions().values()} == {"python311"}


def test_the_cloud_event_entry_point_is_fed_by_the_push_subscription():
    [cloud_event] = [name for name, kind in entry_points_in_main().items() if kind == "cloud_event"]
    worker, body = function_named(cloud_event)
    push = resources()["google_pubsub_subscription"]["worker_push"]["push_config"][0]

    assert "event_trigger" not in body  # see pubsub.tf: the push subscription is ours
    assert refers_to(push["push_endpoint"], "google_cloudfunctions2_function", worker)
    assert refers_to(push["oidc_token"][0]["audience"], "google_cloudfunctions2_function", worker)


def test_the_scheduler_calls_the_poller_with_an_oidc_token():
    poller, _ = function_named("scheduled_poller")
    assert entry_points_in_main()["scheduled_poller"] == "http"
    [job] = resources()["google_cloud_scheduler_job"].values()
    target = job["http_target"][0]

    assert refers_to(target["uri"], "google_cloudfunctions2_function", poller)
    assert refers_to(target["oidc_token"][0]["audience"], "google_cloudfunctions2_function", poller)
    assert resolve(variables()["poller_schedule"]["default"]) == "* * * * *"


# --- configuration ----------------------------------------------------------------------------

def test_every_env_var_is_a_settings_field_or_a_known_runtime_variable():
    fields = {name.upper() for name in Settings.model_fields}
    for name, function in functions().items():
        env = set(env_of(function))
        secrets = {s["key"] for s in function["service_config"][0]["secret_environment_variables"]}

        unknown = (env | secrets) - fields - set(RUNTIME_VARS)
        assert not unknown, f"{name} sets variables nobody reads: {sorted(unknown)}"


def test_every_required_setting_is_set_on_every_function():
    required = {name.upper() for name, field in Settings.model_fields.items() if field.is_required()}
    assert required  # GOOGLE_CLOUD_PROJECT, IMAGES_BUCKET
    for name, function in functions().items():
        assert required <= set(env_of(function)), name


def test_gunicorn_threads_match_the_request_concurrency():
    # Cloud Run sends max_instance_request_concurrency requests to an instance at once;
    # functions-framework serves THREADS at once (by default 4 per CPU).
    for name, function in functions().items():
        threads = str(env_of(function)["THREADS"])
        concurrency = str(function["service_config"][0]["max_instance_request_concurrency"])
        assert threads.strip("${}") == concurrency.strip("${}"), name


@pytest.mark.parametrize("key, secret", [("GEMINI_API_KEY", "gemini_api_key"), ("WEBHOOK_SECRET", "webhook_secret")])
def test_the_secrets_come_from_secret_manager_on_every_function(key, secret):
    for name, function in app_functions().items():
        secrets = {s["key"]: s for s in function["service_config"][0]["secret_environment_variables"]}
        assert set(secrets) == {"GEMINI_API_KEY", "WEBHOOK_SECRET"}, name
        assert refers_to(secrets[key]["secret"], "google_secret_manager_secret", secret), name
        assert secrets[key]["version"] == "latest", name
        assert key not in env_of(function), name
        # Its own service account may read that secret, granted on the secret alone.
        account = re.fullmatch(r"\$\{google_service_account\.(\w+)\.email\}",
                               function["service_config"][0]["service_account_email"]).group(1)
        assert any(refers_to(m["secret_id"], "google_secret_manager_secret", secret)
                   and m["role"] == "roles/secretmanager.secretAccessor"
                   and refers_to(m["member"], "google_service_account", account)
                   for m in resources()["google_secret_manager_secret_iam_member"].values()), (name, key)


def test_the_default_variables_make_valid_settings():
    # Values that only exist after apply (bucket and topic names) stand in as placeholders.
    env = {key: resolve(value) for key, value in {**locals_()["app_env"], **locals_()["events_env"]}.items()}
    env = {key: "tf-managed" if isinstance(v, str) and "${" in v else v for key, v in env.items()}

    settings = Settings(**{key.lower(): value for key, value in env.items()})

    assert settings.lease_seconds > settings.max_wait_seconds + settings.gemini_timeout_seconds


# --- the push subscription ----------------------------------------------------------------------

def test_the_push_subscription_reads_the_work_topic_and_dead_letters():
    env = locals_()["app_env"]
    [work_topic] = re.findall(r"google_pubsub_topic\.(\w+)\.name", env["WORK_TOPIC"])
    sub = resources()["google_pubsub_subscription"]["worker_push"]
    [policy] = sub["dead_letter_policy"]

    assert refers_to(sub["topic"], "google_pubsub_topic", work_topic)
    [dead_letter_topic] = re.findall(r"google_pubsub_topic\.(\w+)\.", policy["dead_letter_topic"])
    assert dead_letter_topic != work_topic
    assert 5 <= resolve(policy["max_delivery_attempts"]) <= 100
    assert sub["retry_policy"][0]["minimum_backoff"] and sub["retry_policy"][0]["maximum_backoff"]
    assert sub["expiration_policy"][0]["ttl"] == ""  # never expires


def test_the_ack_deadline_outlasts_the_longest_delivery():
    env = {**locals_()["app_env"], **locals_()["events_env"]}
    # Wait for capacity, the model call, then (if the item ended the job) the inline webhook:
    # its connect and its answer, each bounded by the webhook timeout.
    longest = (resolve(env["MAX_WAIT_SECONDS"]) + resolve(env["GEMINI_TIMEOUT_SECONDS"])
               + 2 * resolve(env["WEBHOOK_TIMEOUT_SECONDS"]))
    sub = resources()["google_pubsub_subscription"]["worker_push"]
    _, worker = function_named("pubsub_worker")
    ack = resolve(sub["ack_deadline_seconds"])
    timeout = resolve(worker["service_config"][0]["timeout_seconds"])

    assert ack > longest
    assert longest < timeout <= ack


def test_the_pubsub_service_agent_can_move_dead_letters():
    agent = "google_project_service_identity.pubsub"
    publishers = [m for m in resources()["google_pubsub_topic_iam_member"].values()
                  if refers_to(m["topic"], "google_pubsub_topic", "dead_letter")]
    subscribers = [m for m in resources()["google_pubsub_subscription_iam_member"].values()
                   if refers_to(m["subscription"], "google_pubsub_subscription", "worker_push")]

    assert any(m["role"] == "roles/pubsub.publisher" and agent in m["member"] for m in publishers)
    assert any(m["role"] == "roles/pubsub.subscriber" and agent in m["member"] for m in subscribers)


# --- IAM and secrets ----------------------------------------------------------------------------

def test_iam_is_granted_member_by_member_and_never_to_everyone():
    iam_types = [t for t in resources() if "_iam_" in t]
    members = [m["member"] for t in iam_types for m in resources()[t].values()]

    assert iam_types and all(t.endswith("_iam_member") for t in iam_types), iam_types
    public = [(t, n) for t in iam_types for n, m in resources()[t].items()
              if m["member"] in ("allUsers", "allAuthenticatedUsers")]
    # One exception: Gemini's webhooks carry no Google identity; their signature is checked in code.
    assert public == [("google_cloud_run_service_iam_member", "gemini_webhook_public")]
    invoker = resources()["google_cloud_run_service_iam_member"]["gemini_webhook_public"]
    assert refers_to(invoker["service"], "google_cloudfunctions2_function", RECEIVER)
    assert invoker["role"] == "roles/run.invoker"
    # The one member list that comes from outside refuses them too.
    [check] = variables()["api_invoker_members"]["validation"]
    assert "allUsers" in check["condition"] and "allAuthenticatedUsers" in check["condition"]


def test_project_level_grants_are_the_few_that_have_no_narrower_level():
    grants = resources()["google_project_iam_member"].values()
    assert {m["role"] for m in grants} <= {"roles/datastore.user", "roles/logging.logWriter", "roles/storage.objectViewer"}
    # Storage on the project only under a condition naming one bucket: never every bucket.
    for grant in grants:
        if grant["role"].startswith("roles/storage."):
            [condition] = grant["condition"]
            assert "projects/_/buckets/${local.function_sources_bucket}" in condition["expression"]


def test_each_function_runs_as_its_own_service_account():
    accounts = [f["service_config"][0]["service_account_email"] for f in functions().values()]
    assert len(set(accounts)) == len(accounts) == 4
    assert all(re.fullmatch(r"\$\{google_service_account\.\w+\.email\}", a) for a in accounts)


def test_no_secret_value_can_land_in_the_state():
    for kind in ("resource", "data"):
        assert "google_secret_manager_secret_version" not in resources(kind)
    assert "google_secret_manager_secret" in resources()


# --- completion events ----------------------------------------------------------------------------

def test_every_function_publishes_events_to_the_events_topic():
    topics = resources()["google_pubsub_topic_iam_member"].values()
    for name, function in app_functions().items():
        assert refers_to(env_of(function)["EVENTS_TOPIC"], "google_pubsub_topic", "events"), name
        assert "WEBHOOK_ALLOW_INSECURE" not in env_of(function), name  # http and private hosts: local only
        account = re.fullmatch(r"\$\{google_service_account\.(\w+)\.email\}",
                               function["service_config"][0]["service_account_email"]).group(1)
        assert any(refers_to(m["topic"], "google_pubsub_topic", "events") and m["role"] == "roles/pubsub.publisher"
                   and refers_to(m["member"], "google_service_account", account) for m in topics), name


def test_the_events_topic_has_a_pull_subscription_that_keeps_a_week():
    [sub] = [s for s in resources()["google_pubsub_subscription"].values()
             if refers_to(s["topic"], "google_pubsub_topic", "events")]
    assert "push_config" not in sub
    assert sub["message_retention_duration"] == "604800s" and sub["expiration_policy"][0]["ttl"] == ""


# --- house rules ----------------------------------------------------------------------------------

def test_every_variable_has_a_type_and_a_description():
    for name, body in variables().items():
        assert body.get("type"), f"variable {name} has no type"
        assert str(body.get("description", "")).strip(), f"variable {name} has no description"


def test_the_source_archive_is_named_by_its_content_hash():
    [(name, obj)] = resources()["google_storage_bucket_object"].items()
    [archive] = resources("data")["archive_file"].values()

    assert re.fullmatch(r"\$\{data\.archive_file\.src\.output_md5\}\.zip", obj["name"])
    assert obj["source"] == "${data.archive_file.src.output_path}"
    assert archive["source_dir"].endswith("/../../functions")
    for function in functions().values():
        source = function["build_config"][0]["source"][0]["storage_source"][0]
        assert refers_to(source["object"], "google_storage_bucket_object", name)


def test_every_checkov_skip_gives_its_reason():
    skips = re.findall(r"checkov:skip=(.*)", tf_text())
    assert skips
    for skip in skips:
        assert re.fullmatch(r"CKV2?_[A-Z]+_\d+:\s*\S.{15,}", skip), skip


# --- dependency order: what a first apply must create before what ----------------------------------

_ADDRESS = re.compile(r"\b((?:data\.)?(?:google|google-beta|time|archive)[a-z0-9_]*\.[a-z0-9_]+|local\.[a-z0-9_]+)\b")


def nodes() -> dict[str, object]:
    """Every resource, data source and local by address ("type.name", "data.type.name", "local.x")."""
    found: dict[str, object] = {f"local.{k}": v for k, v in locals_().items()}
    for kind, prefix in (("resource", ""), ("data", "data.")):
        for rtype, named in resources(kind).items():
            found.update({f"{prefix}{rtype}.{name}": body for name, body in named.items()})
    return found


def references(address: str) -> set[str]:
    """The addresses one node names anywhere in its body (expressions and depends_on)."""
    text = json.dumps(nodes()[address])
    return {a for a in _ADDRESS.findall(text) if a in nodes() and a != address}


def waits_for(address: str) -> set[str]:
    """Everything the node is created after: its references, transitively."""
    seen: set[str] = set()
    todo = [address]
    while todo:
        for ref in references(todo.pop()) - seen:
            seen.add(ref)
            todo.append(ref)
    return seen


def account_of(function: dict) -> str:
    return re.fullmatch(r"\$\{google_service_account\.(\w+)\.email\}",
                        function["service_config"][0]["service_account_email"]).group(1)


def secrets_mounted(function: dict) -> set[str]:
    """The google_secret_manager_secret names a function reads, static and dynamic blocks."""
    config = function["service_config"][0]
    refs = [s["secret"] for s in config.get("secret_environment_variables", [])]
    for block in config.get("dynamic", []):
        if "secret_environment_variables" in block:
            refs.append(block["secret_environment_variables"]["for_each"])
    return {re.search(r"google_secret_manager_secret\.(\w+)", r).group(1) for r in refs}


def test_every_function_depends_on_the_grant_of_every_secret_it_reads():
    grants = resources()["google_secret_manager_secret_iam_member"]
    for name, function in functions().items():
        account = account_of(function)
        mounted = secrets_mounted(function)
        assert ({"gemini_api_key", "webhook_secret"} <= mounted) == (name != RECEIVER), name
        for secret in mounted:
            [grant] = [g for g, m in grants.items()
                       if refers_to(m["secret_id"], "google_secret_manager_secret", secret)
                       and refers_to(m["member"], "google_service_account", account)
                       and m["role"] == "roles/secretmanager.secretAccessor"]
            # Listed in depends_on: the function only names the secret, not the grant.
            assert f"${{google_secret_manager_secret_iam_member.{grant}}}" in function["depends_on"], (name, secret)


def test_the_api_keys_secret_is_mounted_and_granted_only_with_require_api_keys():
    _, api = function_named("http_api")
    assert "api_keys" in secrets_mounted(api)
    assert resources()["google_secret_manager_secret"]["api_keys"]["count"] == "${var.require_api_keys ? 1 : 0}"
    assert resources()["google_secret_manager_secret_iam_member"]["api_keys"]["count"] == "${var.require_api_keys ? 1 : 0}"
    for name, function in functions().items():
        assert ("api_keys" in secrets_mounted(function)) == (name == "api"), name
        assert ("gemini_webhook_secret" in secrets_mounted(function)) == (name == RECEIVER), name


def test_every_function_depends_on_its_build_grants_and_the_apis():
    build_grants = {f"google_project_iam_member.{n}" for n, m in resources()["google_project_iam_member"].items()
                    if refers_to(m["member"], "google_service_account", "build")}
    build_grants |= {f"{t}.{n}" for t in ("google_storage_bucket_iam_member", "google_artifact_registry_repository_iam_member")
                     for n, m in resources()[t].items() if refers_to(m["member"], "google_service_account", "build")}
    assert len(build_grants) == 4
    for name, function in functions().items():
        listed = {d.strip("${}") for d in function["depends_on"]}
        assert build_grants | {"google_project_service.this"} <= listed, name


def test_every_resource_is_created_after_the_apis_are_enabled():
    for address in nodes():
        if address.startswith("local.") or address == "google_project_service.this":
            continue
        if address == "data.archive_file.src":  # a local zip, no API
            continue
        if address.startswith("time_sleep."):
            assert "google_project_service.this" in waits_for(address)
            continue
        assert "google_project_service.this" in waits_for(address), address


def test_alert_policies_are_created_after_the_wait_for_their_metrics():
    [(wait_name, wait)] = [(n, w) for n, w in resources()["time_sleep"].items() if "google_logging_metric." in json.dumps(w)]
    wait_address = f"time_sleep.{wait_name}"
    metrics = resources()["google_logging_metric"]
    # Every log-based metric is behind the wait, and the wait lasts the documented 10 minutes.
    for metric in metrics:
        assert f"google_logging_metric.{metric}" in references(wait_address), metric
    duration = default(wait["create_duration"].strip("${}").removeprefix("var."))
    seconds = int(duration[:-1]) * (60 if duration.endswith("m") else 1)
    assert seconds >= 600
    # Every policy that reads a log-based metric reads its type through the wait.
    for name, policy in resources()["google_monitoring_alert_policy"].items():
        filters = [c["condition_threshold"][0]["filter"] for c in policy["conditions"]]
        assert not any("google_logging_metric." in f for f in filters), name
        if any("logging.googleapis.com/user" in f or "local.metric_types" in f for f in filters):
            assert wait_address in waits_for(f"google_monitoring_alert_policy.{name}"), name
    assert "time" in tf()["terraform"][0]["required_providers"][0]


# --- APIs ----------------------------------------------------------------------------------------------

# The services each resource type needs (iam.tf, apis.tf). A new resource type fails
# test_every_used_api_is_enabled_and_no_other until it is listed here.
API_OF = {
    "google_artifact_registry_repository": {"artifactregistry"},
    "google_artifact_registry_repository_iam_member": {"artifactregistry"},
    "google_cloud_run_service_iam_member": {"run"},
    "google_cloud_scheduler_job": {"cloudscheduler"},
    "google_cloudfunctions2_function": {"cloudfunctions", "cloudbuild", "run", "artifactregistry"},
    "google_firestore_database": {"firestore"},
    "google_firestore_field": {"firestore"},
    "google_firestore_index": {"firestore"},
    "google_logging_metric": {"logging"},
    "google_monitoring_alert_policy": {"monitoring"},
    "google_project": {"cloudresourcemanager"},
    "google_project_iam_member": {"cloudresourcemanager"},
    "google_project_service": set(),
    "google_project_service_identity": {"pubsub"},
    "google_pubsub_subscription": {"pubsub"},
    "google_pubsub_subscription_iam_member": {"pubsub"},
    "google_pubsub_topic": {"pubsub"},
    "google_pubsub_topic_iam_member": {"pubsub"},
    "google_secret_manager_secret": {"secretmanager"},
    "google_secret_manager_secret_iam_member": {"secretmanager"},
    "google_service_account": {"iam"},
    "google_service_account_iam_member": {"iam"},
    "google_storage_bucket": {"storage"},
    "google_storage_bucket_iam_member": {"storage"},
    "google_storage_bucket_object": {"storage"},
    "time_sleep": set(),
    "archive_file": set(),
}


def enabled_apis() -> set[str]:
    return {s.removesuffix(".googleapis.com") for s in re.findall(r'"([a-z]+\.googleapis\.com)"', locals_()["services"])}


def test_every_used_api_is_enabled_and_no_other():
    used_types = set(resources()) | set(resources("data"))
    unknown = used_types - set(API_OF)
    assert not unknown, f"say which API these need in API_OF: {sorted(unknown)}"
    needed = set().union(*(API_OF[t] for t in used_types))

    assert enabled_apis() == needed
    assert "eventarc" not in enabled_apis()  # no function has an event_trigger
    assert not any("event_trigger" in f for f in functions().values())


# --- IAM: builds and images -------------------------------------------------------------------------

def grants_to(account: str) -> list[tuple[str, str, dict]]:
    """(resource type, role, body) of every grant to one of our service accounts."""
    return [(t, m["role"], m) for t in resources() if t.endswith("_iam_member")
            for m in resources()[t].values() if refers_to(m["member"], "google_service_account", account)]


def test_builds_read_the_function_sources_and_nothing_else():
    grants = grants_to("build")
    storage = [(t, m) for t, role, m in grants if role.startswith("roles/storage.")]
    assert {role for _, role, _ in grants} == {"roles/logging.logWriter", "roles/artifactregistry.writer",
                                               "roles/storage.objectViewer"}
    for rtype, grant in storage:
        if rtype == "google_storage_bucket_iam_member":
            assert refers_to(grant["bucket"], "google_storage_bucket", "source")
        else:  # the bucket Cloud Functions creates on the first deploy, named in a condition
            assert rtype == "google_project_iam_member"
            [condition] = grant["condition"]
            names = set(re.findall(r'"projects/_/buckets/([^"/]+)', condition["expression"]))
            assert names == {"${local.function_sources_bucket}"}
            assert locals_()["function_sources_bucket"] == "gcf-v2-sources-${data.google_project.this.number}-${var.region}"
    [(_, _, writer)] = [g for g in grants if g[0] == "google_artifact_registry_repository_iam_member"]
    assert refers_to(writer["repository"], "google_artifact_registry_repository", "functions")
    assert not any(refers_to(str(m.get("bucket", "")), "google_storage_bucket", "images") for _, _, m in grants)


def test_every_writer_can_read_back_an_existing_object_and_delete_none():
    images = [m for m in resources()["google_storage_bucket_iam_member"].values()
              if refers_to(m["bucket"], "google_storage_bucket", "images") and not m.get("condition")]
    for name, function in app_functions().items():
        account = account_of(function)
        roles = {m["role"] for m in images if refers_to(m["member"], "google_service_account", account)}
        # create (if_generation_match=0) and get (the metadata of an object that already exists)
        assert roles == {"roles/storage.objectCreator", "roles/storage.objectViewer"}, name
    assert {m["role"] for m in images} == {"roles/storage.objectCreator", "roles/storage.objectViewer"}


def test_only_the_poller_deletes_and_only_staged_bodies():
    conditional = [m for m in resources()["google_storage_bucket_iam_member"].values()
                   if refers_to(m["bucket"], "google_storage_bucket", "images") and m.get("condition")]
    [grant] = conditional
    assert refers_to(grant["member"], "google_service_account", "poller")
    [condition] = grant["condition"]
    from core.expanding import STAGED_PREFIX

    prefix = f"projects/_/buckets/${{google_storage_bucket.images.name}}/objects/{STAGED_PREFIX}"
    assert condition["expression"] == f'resource.name.startsWith("{prefix}")'


def test_staged_bodies_left_behind_expire_long_after_any_expansion():
    images = resources()["google_storage_bucket"]["images"]
    rules = [r["condition"][0] for r in images["lifecycle_rule"] if r["action"][0]["type"] == "Delete"]
    from core.expanding import STAGED_PREFIX  # where submitting.py stages bodies

    [rule] = [c for c in rules if c.get("matches_prefix") == [STAGED_PREFIX]]
    assert rule["age"] == "${var.staged_bodies_retention_days}" and default("staged_bodies_retention_days") >= 7


# --- the poller's schedule ------------------------------------------------------------------------------

def test_a_tick_ends_before_the_scheduler_starts_the_next_one():
    [job] = resources()["google_cloud_scheduler_job"].values()
    _, poller = function_named("scheduled_poller")
    config = poller["service_config"][0]
    assert job["attempt_deadline"] == "${var.poller_timeout_seconds}s"
    assert config["timeout_seconds"] == "${var.poller_timeout_seconds}"

    timeout, budget, tail = (default(v) for v in ("poller_timeout_seconds", "poller_budget_seconds", "poller_tail_seconds"))
    assert timeout >= budget + tail and 15 <= timeout <= 1800
    assert tail >= 2 * default("webhook_timeout_seconds")
    conditions = [p["condition"] for p in job["lifecycle"][0]["precondition"]]
    assert any("var.poller_budget_seconds + var.poller_tail_seconds" in c for c in conditions)
    # Ticks never overlap; each call (a tick or one batch's ingest nudge) has an instance to
    # itself, and enough instances let several finished batches ingest at once beside a tick.
    assert default("poller_max_instances") >= 4
    assert config["max_instance_request_concurrency"] == 1


def test_an_ingest_slice_ends_within_the_nudges_ack_deadline():
    sub = resources()["google_pubsub_subscription"]["batch_nudges_push"]
    assert sub["push_config"][0]["push_endpoint"].startswith("${google_cloudfunctions2_function.poller")
    deadline = min(600, default("poller_timeout_seconds"))
    assert sub["ack_deadline_seconds"] == "${min(600, var.poller_timeout_seconds)}"
    assert default("poller_budget_seconds") < deadline
    conditions = [p["condition"] for p in sub["lifecycle"][0]["precondition"]]
    assert any("var.poller_budget_seconds < min(600, var.poller_timeout_seconds)" in c for c in conditions)
    assert sub["retry_policy"][0]["minimum_backoff"]  # a busy intent's 503 is retried, spaced out


def test_manifest_parts_expire_by_a_lifecycle_rule():
    images = resources()["google_storage_bucket"]["images"]
    rules = [r["condition"][0] for r in images["lifecycle_rule"] if r["action"][0]["type"] == "Delete"]
    assert any(c.get("matches_prefix") == ["_manifest-parts/"] and c["age"] == 1 for c in rules)


def test_no_comment_says_that_ticks_overlap():
    assert not re.search(r"ticks may overlap|Overlapping calls are safe", tf_text())


# --- log-based metrics, checked against sample log entries -------------------------------------------

_SEVERITIES = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]


def expanded_filter(metric: str) -> list[str]:
    """The metric's filter with ${local.x} expanded: one Logging query term per line (ANDed)."""
    text = resources()["google_logging_metric"][metric]["filter"]
    text = re.sub(r"^<<-EOT\n|\n\s*EOT\s*$", "", text)
    while m := re.search(r"\$\{local\.(\w+)\}", text):
        text = text.replace(m.group(0), locals_()[m.group(1)].removeprefix("<<-EOT\n").rsplit("EOT", 1)[0])
    # The services: "${join(" OR ", [for f in [<functions>] : "\"${f.name}\""])}" and "${<function>.name}".
    if m := re.search(r'\$\{join\(" OR ", \[for f in \[(.*?)\] : .*?\]\)\}', text):
        names = [functions()[n]["name"] for n in re.findall(r"google_cloudfunctions2_function\.(\w+)", m.group(1))]
        text = text.replace(m.group(0), " OR ".join(f'"{n}"' for n in names))
    text = re.sub(r"\$\{google_cloudfunctions2_function\.(\w+)\.name\}", lambda m: functions()[m.group(1)]["name"], text)
    # One term per line, or several on a line separated by spaces (never after NOT).
    return [term.strip() for line in text.splitlines()
            for term in re.split(r"(?<!NOT) (?=[A-Za-z][\w.]*[:=<>])", line.strip()) if term.strip()]


def field(entry: dict, path: str):
    value = entry
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def matches(term: str, entry: dict) -> bool:
    """The few forms of the Logging query language our filters use."""
    if term.startswith("NOT "):
        return not matches(term[4:], entry)
    if m := re.fullmatch(r'([\w.]+)=\((.*)\)', term):
        return field(entry, m.group(1)) in {v.strip().strip('"') for v in m.group(2).split(" OR ")}
    if m := re.fullmatch(r'([\w.]+)="?([^"]*)"?', term):
        return str(field(entry, m.group(1))) == m.group(2)
    if m := re.fullmatch(r'([\w.]+):\*', term):
        return field(entry, m.group(1)) is not None
    if m := re.fullmatch(r'([\w.]+):"([^"]*)"', term):
        return m.group(2) in str(field(entry, m.group(1)) or "")
    if m := re.fullmatch(r"severity>=(\w+)", term):
        return _SEVERITIES.index(entry.get("severity", "DEFAULT")) >= _SEVERITIES.index(m.group(1))
    raise AssertionError(f"filter term this test does not understand: {term}")


def counted(metric: str, entry: dict) -> bool:
    return all(matches(term, entry) for term in expanded_filter(metric))


def log_entry(function: str, log: str = "stdout", **fields) -> dict:
    service = resources()["google_cloudfunctions2_function"][function]["name"]
    return {"resource": {"type": "cloud_run_revision", "labels": {"service_name": service}},
            "logName": f"projects/p/logs/run.googleapis.com%2F{log}", **fields}


def test_the_error_metric_counts_our_errors_but_not_the_request_log_of_a_hand_back():
    hand_back = log_entry("worker", "requests", severity="ERROR", httpRequest={"status": 503})
    hand_back_line = log_entry("worker", severity="WARNING", jsonPayload={"state": "queued"})
    our_error = log_entry("poller", severity="ERROR", jsonPayload={"message": "reconciling intent x failed"})
    out_of_memory = log_entry("worker", "varlog%2Fsystem", severity="ERROR", textPayload="Memory limit exceeded")
    other_service = {**our_error, "resource": {"type": "cloud_run_revision", "labels": {"service_name": "other"}}}

    assert not counted("function_errors", hand_back)
    assert not counted("function_errors", hand_back_line)
    assert counted("function_errors", our_error)
    assert counted("function_errors", out_of_memory)
    assert not counted("function_errors", other_service)


def test_the_dead_letter_metric_counts_state_lines_from_every_function():
    from core.models import ItemState

    for function in app_functions():
        line = log_entry(function, severity="WARNING", jsonPayload={"state": ItemState.DEAD_LETTERED.value})
        assert counted("items_dead_lettered", line), function
    assert not counted("items_dead_lettered", log_entry("worker", severity="INFO", jsonPayload={"state": "succeeded"}))
    assert 'jsonPayload.state="dead_lettered"' in expanded_filter("items_dead_lettered")


def test_the_quota_metric_counts_the_workers_429_warnings():
    line = log_entry("worker", severity="WARNING", jsonPayload={"quota_id": "GenerateRequestsPerMinutePerProjectPerModel"})
    assert counted("worker_quota_exceeded", line)
    assert not counted("worker_quota_exceeded", {**line, "severity": "INFO"})
    assert not counted("worker_quota_exceeded", log_entry("api", severity="WARNING", jsonPayload={"quota_id": "x"}))


# --- retention -------------------------------------------------------------------------------------------

# Collections that do not grow with use, and why; every other collection the code writes needs
# a TTL policy on expire_at.
BOUNDED_COLLECTIONS = {
    "ratelimit": "one document per limiter (model)",
    "leases": "RATE_CONCURRENCY documents per limiter, reused",
    "spend": "one document per limiter (its spend window), pruned on every write",
    "breakers": "one document per breaker",
    "model_halts": "one document per model ever halted (a handful)",
    "usage": "only a parent path: the counters are in usage/{day}/shards",
}


def collections_in_code() -> set[str]:
    adapters = ROOT / "functions" / "adapters" / "firestore"
    text = "\n".join(p.read_text() for p in adapters.glob("*.py"))
    # Default collection names of the adapters' constructors, and subcollections by literal name.
    return set(re.findall(r'(?:collection|intents): str = "(\w+)"', text)) | set(re.findall(r'\.collection\("(\w+)"\)', text))


def ttl_policies() -> dict[str, dict]:
    return {f["collection"]: f for f in resources()["google_firestore_field"].values() if "ttl_config" in f}


def test_every_growing_collection_has_a_ttl_policy_on_expire_at():
    code = collections_in_code()
    assert {"jobs", "items", "batches", "events", "pool", "shards", "slots", "idempotency"} <= code

    assert set(ttl_policies()) == code - set(BOUNDED_COLLECTIONS)
    for collection, policy in ttl_policies().items():
        assert policy["field"] == "expire_at", collection
        assert policy["index_config"] == [{}], collection  # exempt: nothing queries it


def test_field_configurations_are_applied_one_at_a_time():
    # One chain: each field configuration waits for exactly one other, and all for one root.
    fields = resources()["google_firestore_field"]
    after = {name: [re.search(r"google_firestore_field\.(\w+)", d).group(1)
                    for d in body.get("depends_on", []) if "google_firestore_field." in d]
             for name, body in fields.items()}
    [root] = [name for name, before in after.items() if not before]
    assert all(len(before) <= 1 for before in after.values())
    next_of = {before[0]: name for name, before in after.items() if before}
    chain = [root]
    while chain[-1] in next_of:
        chain.append(next_of[chain[-1]])
    assert sorted(chain) == sorted(fields)


def test_records_are_kept_as_long_as_the_images():
    assert default("records_retention_days") == default("images_retention_days") == 30
    for name, function in functions().items():
        assert env_of(function)["RECORDS_RETENTION_DAYS"] == "${var.records_retention_days}", name


# --- sizing ----------------------------------------------------------------------------------------------

SIZED = {"rate_limit_requests", "rate_limit_images", "rate_concurrency", "worker_concurrency", "worker_max_instances"}


def sizing(rpm: float, latency: float, window: float = 60) -> dict[str, int]:
    """sizing.tf, in Python: what docs/deploying.md's table shows."""
    limit = math.floor(rpm * window / 60)
    concurrency = math.ceil(rpm / 60 * latency)
    slots = concurrency + math.ceil(concurrency / 4)
    per_instance = min(8, slots)
    return {"rate_limit_requests": limit, "rate_limit_images": limit, "rate_concurrency": concurrency,
            "worker_slots": slots, "worker_concurrency": per_instance,
            "worker_max_instances": math.ceil(slots / per_instance)}


def table_in_docs() -> dict[int, dict[str, int]]:
    """The rows of the sizing table in docs/deploying.md, by requests per minute."""
    rows = {}
    for line in DEPLOYING_MD.read_text().splitlines():
        cells = [c.strip().replace(",", "").strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].isdigit():
            rpm, _, concurrency, slots, per_instance, instances, _ = cells
            rows[int(rpm)] = {"rate_concurrency": int(concurrency), "worker_slots": int(slots),
                              "worker_concurrency": int(per_instance), "worker_max_instances": int(instances)}
    return rows


def test_the_sizing_table_in_the_docs_is_what_the_formulas_give():
    rows = table_in_docs()
    assert set(rows) == {10, 60, 300, 1000}
    for rpm, row in rows.items():
        derived = sizing(rpm, default("model_latency_seconds"))
        assert row == {k: derived[k] for k in row}, rpm
        # Little's law: enough calls in flight to use the whole quota at the assumed latency.
        assert derived["rate_concurrency"] >= rpm / 60 * default("model_latency_seconds")
        assert derived["worker_concurrency"] * derived["worker_max_instances"] >= derived["worker_slots"]


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
@pytest.mark.parametrize("rpm", [10, 60, 300, 1000])
def test_sizing_tf_computes_what_the_formulas_give(tmp_path, rpm):
    # sizing.tf holds only locals, so terraform console evaluates it with variables.tf alone,
    # without providers.
    for name in ("variables.tf", "sizing.tf"):
        shutil.copy(TF_DIR / name, tmp_path / name)
    names = sorted(SIZED | {"worker_slots"})
    expression = "jsonencode({" + ", ".join(f"{n} = local.{n}" for n in names) + "})"
    out = subprocess.run(["terraform", "console", "-var", "project_id=p", "-var", f"model_requests_per_minute={rpm}"],
                         input=expression, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    computed = json.loads(json.loads(out.strip().splitlines()[-1]))

    assert computed == {n: sizing(rpm, default("model_latency_seconds"))[n] for n in names}


def test_the_worker_and_the_limiter_take_the_derived_sizes():
    env = locals_()["app_env"]
    _, worker = function_named("pubsub_worker")
    config = worker["service_config"][0]
    assert env["RATE_LIMIT_REQUESTS"] == "${local.rate_limit_requests}"
    assert env["RATE_LIMIT_IMAGES"] == "${local.rate_limit_images}"
    assert env["RATE_CONCURRENCY"] == "${local.rate_concurrency}"
    assert config["max_instance_count"] == "${local.worker_max_instances}"
    assert config["max_instance_request_concurrency"] == "${local.worker_concurrency}"
    for name in ("rate_limit_requests", "rate_limit_images", "rate_concurrency", "worker_concurrency", "worker_max_instances"):
        assert default(name) is None, name  # derived unless overridden


def test_functions_wait_for_their_grants_to_propagate():
    [wait] = [n for n, w in resources()["time_sleep"].items() if "_iam_member." in json.dumps(w)]
    triggers = set(references(f"time_sleep.{wait}"))
    for name, function in functions().items():
        assert f"${{time_sleep.{wait}}}" in function["depends_on"], name
        grants = {d.strip("${}") for d in function["depends_on"]} - {"google_project_service.this", f"time_sleep.{wait}"}
        assert grants and grants <= triggers, (name, grants - triggers)
    assert default(resources()["time_sleep"][wait]["create_duration"].strip("${}").removeprefix("var.")) == "2m"


def test_the_stuck_item_sweep_has_its_collection_group_indexes():
    """FirestoreJobStore._stale: lane ==, state ==, then a range on the time field, over the
    items of every job."""
    indexes = resources()["google_firestore_index"]
    wanted = {("lane", "state", "lease_expires_at"), ("lane", "state", "updated_at")}
    found = {tuple(f["field_path"] for f in index["fields"]) for index in indexes.values()
             if index["collection"] == "items" and index["query_scope"] == "COLLECTION_GROUP"}
    assert wanted <= found, found


def test_the_model_and_prices_follow_the_catalog_unless_set():
    import catalog

    assert variables()["gemini_model"].get("default") is None
    assert variables()["price_interactive_image_usd"].get("default") is None
    assert variables()["price_batch_image_usd"].get("default") is None
    assert "models.json" in locals_()["model_catalog"] and catalog.load().default_model
    assert "GEMINI_MODEL" not in locals_()["app_env"]  # unset when null, so the catalog's default applies


# --- Gemini's batch webhooks ----------------------------------------------------------------------


def grants_of(account: str) -> set[tuple[str, str, str]]:
    """(kind, resource it is granted on, role) of every grant to one service account."""
    found = set()
    for kind, grants in resources().items():
        for name, m in grants.items():
            if kind.endswith("_iam_member") and refers_to(m["member"], "google_service_account", account):
                target = next((m[k] for k in ("secret_id", "topic", "service", "service_account_id", "subscription",
                                              "bucket", "project") if k in m), "")
                found.add((kind, target, m["role"]))
    return found


def test_the_receiver_reads_its_secret_the_intents_and_publishes_nudges_nothing_more():
    name, receiver = function_named("gemini_webhook")
    assert name == RECEIVER and secrets_mounted(receiver) == {"gemini_webhook_secret"}
    assert "GEMINI_WEBHOOK_SECRET" not in env_of(receiver)
    assert refers_to(locals_()["app_env"]["BATCH_NUDGES_TOPIC"], "google_pubsub_topic", "batch_nudges")
    roles = {(kind, role) for kind, _, role in grants_of(account_of(receiver))}
    assert roles == {("google_project_iam_member", "roles/datastore.user"),
                     ("google_secret_manager_secret_iam_member", "roles/secretmanager.secretAccessor"),
                     ("google_pubsub_topic_iam_member", "roles/pubsub.publisher")}
    for kind, target, _ in grants_of(account_of(receiver)):
        if kind == "google_pubsub_topic_iam_member":
            assert refers_to(target, "google_pubsub_topic", "batch_nudges")
        if kind == "google_secret_manager_secret_iam_member":
            assert refers_to(target, "google_secret_manager_secret", "gemini_webhook_secret")


def test_nudges_are_pushed_to_the_poller_by_an_identity_that_may_only_invoke_it():
    poller, _ = function_named("scheduled_poller")
    sub = resources()["google_pubsub_subscription"]["batch_nudges_push"]
    push = sub["push_config"][0]
    assert refers_to(sub["topic"], "google_pubsub_topic", "batch_nudges")
    assert refers_to(push["push_endpoint"], "google_cloudfunctions2_function", poller)
    assert refers_to(push["oidc_token"][0]["audience"], "google_cloudfunctions2_function", poller)
    account = re.search(r"google_service_account\.(\w+)\.", push["oidc_token"][0]["service_account_email"]).group(1)
    assert account not in {account_of(f) for f in functions().values()}
    assert {(kind, role) for kind, _, role in grants_of(account)} == {
        ("google_cloud_run_service_iam_member", "roles/run.invoker")}
    assert sub["expiration_policy"][0]["ttl"] == ""
