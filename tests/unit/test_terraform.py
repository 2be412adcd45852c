"""Offline checks of infra/terraform: the HCL parsed with python-hcl2 and held against functions/.

terraform validate needs the providers, which CI cannot download; these checks need nothing but
the files. They keep Terraform and the code from drifting apart: the entry points, the env var
names, the ack deadline against the worker's longest delivery, and the house rules on IAM and
secrets.
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import hcl2
import pytest
from hcl2.utils import SerializationOptions

from config import Settings

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "infra" / "terraform"
MAIN_PY = ROOT / "functions" / "main.py"

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
    """A literal, or "${var.x}" replaced by the variable's default (when it has one)."""
    if isinstance(value, str) and (m := _VAR_REF.fullmatch(value)):
        return variables()[m.group(1)].get("default", value)
    return value


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


def function_named(entry_point: str) -> tuple[str, dict]:
    [(name, body)] = [(n, f) for n, f in functions().items()
                      if f["build_config"][0]["entry_point"] == entry_point]
    return name, body


# --- entry points -----------------------------------------------------------------------------

def test_every_entry_point_of_main_py_is_deployed_once_and_nothing_else():
    in_main = entry_points_in_main()
    deployed = [f["build_config"][0]["entry_point"] for f in functions().values()]

    assert sorted(deployed) == sorted(in_main)
    assert set(in_main) == {"http_api", "pubsub_worker", "scheduled_poller"}
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
    for name, function in functions().items():
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
    [sub] = [s for s in resources()["google_pubsub_subscription"].values() if "push_config" in s]
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
    assert not {"allUsers", "allAuthenticatedUsers"} & set(members)
    # The one member list that comes from outside refuses them too.
    [check] = variables()["api_invoker_members"]["validation"]
    assert "allUsers" in check["condition"] and "allAuthenticatedUsers" in check["condition"]


def test_project_level_grants_are_the_few_that_have_no_narrower_level():
    roles = {m["role"] for m in resources()["google_project_iam_member"].values()}
    assert roles <= {"roles/datastore.user", "roles/logging.logWriter", "roles/storage.objectViewer"}


def test_each_function_runs_as_its_own_service_account():
    accounts = [f["service_config"][0]["service_account_email"] for f in functions().values()]
    assert len(set(accounts)) == len(accounts) == 3
    assert all(re.fullmatch(r"\$\{google_service_account\.\w+\.email\}", a) for a in accounts)


def test_no_secret_value_can_land_in_the_state():
    for kind in ("resource", "data"):
        assert "google_secret_manager_secret_version" not in resources(kind)
    assert "google_secret_manager_secret" in resources()


# --- completion events ----------------------------------------------------------------------------

def test_every_function_publishes_events_to_the_events_topic():
    topics = resources()["google_pubsub_topic_iam_member"].values()
    for name, function in functions().items():
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


def test_the_stuck_item_sweep_has_its_collection_group_indexes():
    """FirestoreJobStore._stale: lane ==, state ==, then a range on the time field, over the
    items of every job."""
    indexes = resources()["google_firestore_index"]
    wanted = {("lane", "state", "lease_expires_at"), ("lane", "state", "updated_at")}
    found = {tuple(f["field_path"] for f in index["fields"]) for index in indexes.values()
             if index["collection"] == "items" and index["query_scope"] == "COLLECTION_GROUP"}
    assert wanted <= found, found
