"""core/submitting.py: the Idempotency-Key's checks and scoping, the body's hash."""
import pytest

from core import submitting


@pytest.mark.parametrize("key, problem", [
    ("k", None), ("a\tb", None), ("x" * 255, None),
    ("", "length out of range"), ("x" * 256, "length out of range"),
    ("a\nb", "control character"), ("a\x7fb", "control character"),
])
def test_an_idempotency_key_is_checked_like_a_header_value(key, problem):
    assert submitting.idempotency_key_problem(key) == problem


def test_a_key_is_scoped_to_the_tenant_and_the_api_key():
    key_id = submitting.idempotency_key_id("t1", "api-key-1", "k")
    assert key_id == submitting.idempotency_key_id("t1", "api-key-1", "k")
    assert key_id != submitting.idempotency_key_id("t2", "api-key-1", "k")
    assert key_id != submitting.idempotency_key_id("t1", "api-key-2", "k")
    assert "k" not in key_id and "api-key-1" not in key_id


def test_the_body_hash_ignores_key_order_only():
    assert submitting.body_sha256({"a": 1, "b": 2}) == submitting.body_sha256({"b": 2, "a": 1})
    assert submitting.body_sha256({"a": 1}) != submitting.body_sha256({"a": 2})
