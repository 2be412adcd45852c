"""The HTTP API's OpenAPI 3.1 contract, generated from the pydantic models so it cannot drift.

`python functions/openapi.py > openapi.json` rewrites the committed copy; a unit test fails when
the committed copy and the models disagree.
"""
from __future__ import annotations

import json
import sys

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

import schemas

API_KEY_HEADER = "X-API-Key"


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}


def _ok(model: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}


def _job_id() -> dict:
    return {"name": "job_id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"}}


def _auth_errors() -> dict:
    return {"401": _error("Missing or invalid API key")}


def _not_found() -> dict:
    return _error("No such job, or another tenant's (the two are not told apart)")


_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (schemas.JobRequest, "validation"),
    (schemas.JobAccepted, "serialization"),
    (schemas.JobStatusResponse, "serialization"),
    (schemas.ErrorResponse, "serialization"),
    (schemas.Health, "serialization"),
    (schemas.DryRun, "serialization"),
    (schemas.RetryAccepted, "serialization"),
    (schemas.Stats, "serialization"),
]


def build_openapi(*, max_items: int = 10_000, max_prompt_chars: int = 4_000) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imagefleet",
            "version": "1.0.0",
            "description": "Serverless image generation at scale on Gemini: submit prompts, follow the job, "
                           "find the images in Cloud Storage.",
        },
        "paths": {
            "/v1/jobs": {"post": _submit_job()},
            "/v1/jobs/{job_id}:retry": {"post": _retry_job()},
            "/v1/stats": {"get": {
                "operationId": "getStats",
                "summary": "Today's usage, spend, limits and the circuit breaker",
                "responses": {"200": _ok("Stats", "Today's figures"), **_auth_errors()},
            }},
            "/v1/jobs/{job_id}": {"get": _get_job(), "delete": _cancel_job()},
            "/healthz": {"get": {"operationId": "health", "summary": "Liveness", "security": [],
                                 "responses": {"200": _ok("Health", "Up")}}},
        },
        "components": {
            "schemas": _schemas(max_items, max_prompt_chars),
            "securitySchemes": {"apiKey": {
                "type": "apiKey", "in": "header", "name": API_KEY_HEADER,
                "description": "A key of a tenant, which owns the jobs it submits and sees only those and its "
                               "own usage; an admin key sees every tenant's"}},
        },
        "security": [{"apiKey": []}],
    }


def _schemas(max_items: int, max_prompt_chars: int) -> dict:
    _, top = models_json_schema(_MODELS, ref_template="#/components/schemas/{model}")
    components = top["$defs"]
    # The limits live in Settings and are checked with validation context; state the defaults.
    components["JobRequest"]["properties"]["requests"]["maxItems"] = max_items
    components["ItemRequest"]["properties"]["prompt"]["maxLength"] = max_prompt_chars
    return components


def _submit_job() -> dict:
    return {
        "operationId": "submitJob",
        "summary": "Submit a generation job (or, with dry_run=true, see its route and cost)",
        "parameters": [
            {"name": "dry_run", "in": "query", "required": False,
             "schema": {"type": "string", "enum": ["true", "false", "1", "0"]}},
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "description": "The same key (per tenant and API key) returns the same job for 24 h",
             "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
        ],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/JobRequest"}}}},
        "responses": {
            "200": {"description": "A dry run's route, or the job an earlier request with the "
                                   "same Idempotency-Key created",
                    "content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/DryRun"},
                        {"$ref": "#/components/schemas/JobAccepted"}]}}}},
            "202": _ok("JobAccepted", "Accepted: follow status_url"),
            "400": _error("Invalid JSON or an invalid request; `fields` names each problem"),
            **_auth_errors(),
            "409": _error("A request with this Idempotency-Key is still in progress"),
            "413": _error("The body is over the size limit"),
            "415": _error("The body is not application/json"),
            "422": _error("This Idempotency-Key was used with another body"),
            "429": _error("The job's estimated cost is over today's budget (Retry-After: the reset)"),
            "503": _error("The lane the job needs is switched off, or generation is halted "
                          "(403 from Gemini)"),
        },
    }


def _retry_job() -> dict:
    return {
        "operationId": "retryJob",
        "summary": "Re-queue the job's dead-lettered items",
        "parameters": [_job_id()],
        "responses": {
            "202": _ok("RetryAccepted", "Re-queued"),
            **_auth_errors(),
            "404": _not_found(),
            "409": _error("Nothing to retry, or the job was cancelled"),
        },
    }


def _get_job() -> dict:
    return {
        "operationId": "getJob",
        "summary": "A job's status, counts and one page of its items",
        "parameters": [
            _job_id(),
            {"name": "page_size", "in": "query", "required": False,
             "description": "items per page; 0 answers the status and counts without items",
             "schema": {"type": "integer", "minimum": 0, "maximum": 500, "default": 100}},
            {"name": "page_token", "in": "query", "required": False,
             "schema": {"type": "string", "pattern": "^[0-9]{1,9}$"}},
            {"name": "batches_page_token", "in": "query", "required": False,
             "description": "batches_next_page_token of the previous status: the next page of its batches",
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"}},
        ],
        "responses": {
            "200": _ok("JobStatusResponse", "The job"),
            "400": _error("Invalid paging"),
            **_auth_errors(),
            "404": _not_found(),
        },
    }


def _cancel_job() -> dict:
    return {
        "operationId": "cancelJob",
        "summary": "Cancel a queued or running job",
        "parameters": [_job_id()],
        "responses": {
            "200": _ok("JobStatusResponse", "Cancelled"),
            **_auth_errors(),
            "404": _not_found(),
            "409": _error("The job has already ended"),
        },
    }


if __name__ == "__main__":
    json.dump(build_openapi(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
