"""core.checkpoints.applies: what a batch checkpoint may write over an item as stored."""
import pytest

from core.checkpoints import applies
from core.transitions import BatchErrorNoted, BatchFailed, BatchSucceeded


def _image(intent_id, key):
    return BatchSucceeded(1.0, intent_id, 1, f"gs://b/{key}.png", {}, "STOP", None)


@pytest.mark.parametrize("state, batch_intent, change, expected", [
    ("queued", None, "image", True),
    ("running", None, "refused", True),
    ("succeeded", "i", "image", False),
    ("succeeded", "i", "retryable", False),
    ("failed", "i", "image", True),
    ("failed", "other", "image", False),
    ("failed", "i", "refused", False),
    ("cancelled", None, "image", False),
    ("dead_lettered", "i", "image", False),
])
def test_applies(state, batch_intent, change, expected):
    changes = {"image": _image("i", "k"), "refused": BatchFailed(1.0, "no", 1, intent_id="i"),
               "retryable": BatchErrorNoted(1.0, "503", 1)}
    assert applies({"state": state, "batch_intent": batch_intent}, changes[change]) is expected
