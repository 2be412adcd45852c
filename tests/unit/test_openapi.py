"""The OpenAPI contract: generated from the pydantic models, committed, served, and honest."""
import json
import pathlib

import jsonschema
import pytest

from openapi import build_openapi
from tests.unit.test_entrypoints import api, fakes, post_job  # noqa: F401 - fixtures

ROOT = pathlib.Path(__file__).parents[2]


def test_the_committed_contract_is_the_generated_one():
    committed = json.loads((ROOT / "openapi.json").read_text())
    assert committed == build_openapi(), "regenerate it: python functions/openapi.py > openapi.json"


def test_it_is_served_with_the_configured_limits(api):
    served = api.get("/v1/openapi.json").get_json()
    assert served["openapi"] == "3.1.0"
    assert served["components"]["schemas"]["JobRequest"]["properties"]["requests"]["maxItems"] == 20  # MAX_ITEMS_PER_JOB in the fixture


def _validator(name):
    spec = build_openapi()
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_real_responses_conform(api):
    accepted = post_job(api, {"requests": [{"prompt": "a"}, {"prompt": "b", "key": "b"}]})
    _validator("JobAccepted").validate(accepted.get_json())
    status = api.get(accepted.get_json()["status_url"]).get_json()
    _validator("JobStatusResponse").validate(status)
    _validator("ErrorResponse").validate(post_job(api, {"requests": []}).get_json())
    _validator("ErrorResponse").validate(api.get("/v1/jobs/nope").get_json())
    _validator("Health").validate(api.get("/healthz").get_json())


@pytest.mark.parametrize("body", [{"requests": [{"prompt": "x", "key": "bad/key"}]}, {"requests": "x"}, {}])
def test_bodies_the_contract_rejects_are_rejected(api, body):
    with pytest.raises(jsonschema.ValidationError):
        _validator("JobRequest").validate(body)
    assert post_job(api, body).status_code == 400
