"""API keys as tenants: the API_KEYS format, and every route for a job of one's own, of another
tenant, and as an admin; usage counted and shown per tenant."""
import json

import pydantic
import pytest

import wiring
from config import Settings
from core.models import Job, JobStatus, Lane
from core.tenants import ApiKeysError, Caller, parse_api_keys
from tests.unit.test_openapi import _validator
from tests.unit.test_entrypoints import api, fakes, post_job, push, worker  # noqa: F401 - fixtures

KEYS = "acme=k-acme, globex=k-globex, admin:ops=k-ops"
ACME, GLOBEX, OPS = ({"X-API-Key": k} for k in ("k-acme", "k-globex", "k-ops"))


# --- API_KEYS ------------------------------------------------------------------------------


def test_plain_keys_are_the_default_tenant():
    assert parse_api_keys("k1, k2") == {"k1": Caller("default"), "k2": Caller("default")}


def test_pairs_name_tenants_and_admins():
    assert parse_api_keys(KEYS) == {
        "k-acme": Caller("acme"), "k-globex": Caller("globex"), "k-ops": Caller("ops", admin=True)}


def test_a_tenant_may_hold_several_keys():
    assert parse_api_keys("acme=old,acme=new") == {"old": Caller("acme"), "new": Caller("acme")}


@pytest.mark.parametrize("text", ["YWJjZA==", "abcd==", "Acme=key", "acme =key", "a/b=c"])
def test_what_does_not_read_as_a_pair_is_a_plain_key(text):
    # Base64 padding, capitals or spaces: not a tenant name, so the whole entry is the key.
    assert parse_api_keys(text) == {text: Caller("default")}


def test_a_mistyped_pair_is_a_plain_key_with_a_warning_that_shows_no_key(caplog):
    assert parse_api_keys("Acme=s3cret-one, YWJjZA==") == {"Acme=s3cret-one": Caller("default"),
                                                          "YWJjZA==": Caller("default")}
    (warning,) = caplog.records
    assert "entry 1" in warning.getMessage() and "s3cret" not in caplog.text


def test_empty_and_unset_mean_no_keys():
    assert parse_api_keys(None) == {} and parse_api_keys(" , ,") == {}


@pytest.mark.parametrize("text,problem", [
    ("root:acme=s3cret-one", "unknown role 'root'"),
    ("acme=s3cret-one,globex=s3cret-one", "two tenants"),
])
def test_malformed_api_keys_are_refused_without_showing_a_key(text, problem):
    with pytest.raises(ApiKeysError, match=problem) as raised:
        parse_api_keys(text)
    assert "s3cret" not in str(raised.value)


def test_settings_refuse_to_start_with_malformed_api_keys(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-unit")
    monkeypatch.setenv("IMAGES_BUCKET", "b")
    monkeypatch.setenv("API_KEYS", "acme=s3cret-one,globex=s3cret-one")
    with pytest.raises(pydantic.ValidationError) as raised:
        Settings()
    assert "s3cret" not in str(raised.value)


# --- routes x (own job, another tenant's job, admin) -----------------------------------------


@pytest.fixture
def tenants(monkeypatch, fakes):
    monkeypatch.setenv("API_KEYS", KEYS)
    wiring.get_settings.cache_clear()
    fakes.accounting.tenant_of = wiring._tenant_of_job  # as wiring.accounting() builds it


def _acme_job(api) -> str:
    r = post_job(api, {"requests": [{"prompt": "a red fox", "key": "fox"}, {"prompt": "a whale"}]}, headers=ACME)
    assert r.status_code == 202
    return r.get_json()["job_id"]


def test_the_job_records_its_tenant(api, fakes, tenants):
    job_id = _acme_job(api)
    assert fakes.store.get_job(job_id).tenant == "acme"


def test_another_tenants_job_is_not_found_on_every_route(api, fakes, tenants):
    job_id = _acme_job(api)
    unknown = "0123456789abcdef0123456789abcdef"
    for method, path in (("GET", "/v1/jobs/{}"), ("POST", "/v1/jobs/{}:retry"), ("DELETE", "/v1/jobs/{}")):
        theirs = api.open(path.format(job_id), method=method, headers=GLOBEX)
        nobodys = api.open(path.format(unknown), method=method, headers=GLOBEX)
        assert theirs.status_code == nobodys.status_code == 404, (method, theirs.get_json())
        # The same answer as a job that does not exist: nothing tells the two apart.
        assert theirs.get_data(as_text=True).replace(job_id, unknown) == nobodys.get_data(as_text=True)
        assert "fox" not in theirs.get_data(as_text=True)
    assert fakes.store.get_job(job_id).status is JobStatus.QUEUED  # the DELETE did nothing


def test_the_owner_sees_retries_and_cancels_its_job(api, fakes, tenants):
    job_id = _acme_job(api)
    status = api.get(f"/v1/jobs/{job_id}", headers=ACME)
    assert status.status_code == 200 and [i["prompt"] for i in status.get_json()["items"]] == ["a red fox", "a whale"]
    assert api.post(f"/v1/jobs/{job_id}:retry", headers=ACME).status_code == 409  # nothing dead-lettered
    assert api.delete(f"/v1/jobs/{job_id}", headers=ACME).status_code == 200


def test_an_admin_sees_retries_and_cancels_any_job(api, fakes, tenants):
    job_id = _acme_job(api)
    assert api.get(f"/v1/jobs/{job_id}", headers=OPS).status_code == 200
    assert api.post(f"/v1/jobs/{job_id}:retry", headers=OPS).status_code == 409
    assert api.delete(f"/v1/jobs/{job_id}", headers=OPS).get_json()["status"] == "cancelled"


def test_jobs_stored_before_tenants_belong_to_the_default_tenant(api, fakes, monkeypatch):
    monkeypatch.setenv("API_KEYS", "plain-key, acme=k-acme")
    wiring.get_settings.cache_clear()
    legacy = Job(job_id="ab" * 16, lane=Lane.INTERACTIVE, status=JobStatus.QUEUED, model="m", item_count=0,
                 created_at=0.0, updated_at=0.0)
    fakes.store.create_job(legacy, [])
    assert api.get(f"/v1/jobs/{legacy.job_id}", headers={"X-API-Key": "plain-key"}).status_code == 200
    assert api.get(f"/v1/jobs/{legacy.job_id}", headers=ACME).status_code == 404


def test_plain_keys_share_one_tenant_as_before(api, monkeypatch):
    monkeypatch.setenv("API_KEYS", "k-one,k-two")
    wiring.get_settings.cache_clear()
    r = post_job(api, {"requests": [{"prompt": "a"}]}, headers={"X-API-Key": "k-one"})
    assert api.get(r.headers["Location"], headers={"X-API-Key": "k-two"}).status_code == 200


def test_an_idempotency_key_never_replays_another_tenants_job(api, fakes, tenants):
    body = {"requests": [{"prompt": "a red fox"}]}
    first = post_job(api, body, headers={**ACME, "Idempotency-Key": "order-1"})
    other = post_job(api, body, headers={**GLOBEX, "Idempotency-Key": "order-1"})
    assert (first.status_code, other.status_code) == (202, 202)
    assert first.get_json()["job_id"] != other.get_json()["job_id"]
    assert fakes.store.get_job(other.get_json()["job_id"]).tenant == "globex"


# --- usage per tenant ----------------------------------------------------------------------


def _run(worker, job_id: str, key: str) -> None:
    assert push(worker, json.dumps({"job_id": job_id, "item_key": key}).encode()).status_code == 200


def test_stats_show_a_tenant_its_own_usage_and_an_admin_everyones(api, worker, fakes, tenants):
    acme = _acme_job(api)
    globex = post_job(api, {"requests": [{"prompt": "a moth", "key": "moth"}]}, headers=GLOBEX).get_json()["job_id"]
    for key in ("fox", "item-00001"):
        _run(worker, acme, key)
    _run(worker, globex, "moth")

    mine = api.get("/v1/stats", headers=ACME).get_json()
    assert (mine["tenant"], mine["admin"]) == ("acme", False)
    assert mine["counters"]["images"] == 2 and mine["counters"]["requests"] == 2
    assert mine["budget"]["spent_usd"] == 0.078 and "committed_usd" not in mine["budget"]
    assert "tenants" not in mine
    assert "breaker" in mine and "limits" in mine

    theirs = api.get("/v1/stats", headers=GLOBEX).get_json()
    assert theirs["counters"]["images"] == 1 and theirs["budget"]["spent_usd"] == 0.039

    admin = api.get("/v1/stats", headers=OPS).get_json()
    for body in (mine, theirs, admin):
        _validator("Stats").validate(body)
    assert admin["admin"] is True and admin["counters"]["images"] == 3
    assert admin["budget"]["spent_usd"] == 0.117
    assert {t: c["images"] for t, c in admin["tenants"].items()} == {"acme": 2, "globex": 1}


def test_a_tenant_with_no_usage_today_sees_zeros_not_others(api, worker, fakes, tenants):
    _run(worker, _acme_job(api), "fox")
    body = api.get("/v1/stats", headers=GLOBEX).get_json()
    assert body["counters"] == {} and body["budget"]["spent_usd"] == 0


def test_without_keys_there_is_one_tenant_that_sees_everything(api, fakes):
    body = api.get("/v1/stats").get_json()
    assert (body["tenant"], body["admin"]) == ("default", True) and "tenants" in body


def test_counting_survives_a_tenant_that_cannot_be_read(fakes):
    from core.accounting import IMAGES, RESERVED_USD, Accounting

    calls = []

    def broken(job_id):
        calls.append(job_id)
        raise RuntimeError("firestore is down")

    accounting = Accounting(store=fakes.counters, clock=fakes.clock, tenant_of=broken)
    accounting.add({RESERVED_USD: 1.0}, job_id="j1")  # not a per-tenant counter: no lookup
    assert calls == []
    accounting.add({IMAGES: 1}, job_id="j1")
    assert calls == ["j1"] and accounting.totals(fresh=True)[IMAGES] == 1


def test_a_jobs_tenant_is_read_once(fakes):
    from core.accounting import IMAGES, Accounting

    calls = []
    accounting = Accounting(store=fakes.counters, clock=fakes.clock,
                            tenant_of=lambda job_id: calls.append(job_id) or "acme")
    for _ in range(3):
        accounting.add({IMAGES: 1}, job_id="j1")
    assert calls == ["j1"] and accounting.summary("acme")["counters"] == {IMAGES: 3}


def test_a_jobs_event_manifest_and_images_hold_nothing_of_another_tenant(api, worker, fakes, tenants):
    acme = _acme_job(api)
    moth = {"requests": [{"prompt": "a secret moth", "key": "moth"}]}
    globex = post_job(api, moth, headers=GLOBEX).get_json()["job_id"]
    for job_id, key in ((acme, "fox"), (acme, "item-00001"), (globex, "moth")):
        _run(worker, job_id, key)

    (event,) = [e for e in fakes.events.store.events.values() if e["job_id"] == acme]
    manifest = fakes.sink.objects[f"{acme}/manifest.jsonl"][0].decode()
    status = api.get(f"/v1/jobs/{acme}", headers=ACME).get_data(as_text=True)
    for text in (event["body"], manifest, status):
        assert acme in text and globex not in text and "moth" not in text
    acme_objects = [name for name in fakes.sink.objects if name.startswith(f"{acme}/")]
    assert sorted(acme_objects) == sorted([f"{acme}/fox.png", f"{acme}/item-00001.png", f"{acme}/manifest.jsonl"])
