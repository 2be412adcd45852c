"""A checkpoint comes after BATCH_CHECKPOINT_LINES result lines or BATCH_CHECKPOINT_BYTES bytes
of the results file, whichever first: small images make large groups, large ones small."""
from core.transitions import IngestProgress
from tests.unit.test_batches import Env


def _checkpointed_lines(env, job) -> list[int]:
    """lines_done of every ingest checkpoint of the job's one batch."""
    (name,) = env.api.batches
    env.api.finish(name)
    real, seen = env.store.checkpoint, []

    def spy(intent_id, owner, change, results):
        if isinstance(change, IngestProgress):
            seen.append(change.lines_done)
        return real(intent_id, owner, change, results)

    env.store.checkpoint = spy
    env.tick()
    return seen


def test_lines_bound_a_checkpoint_when_the_bytes_do_not():
    env = Env(checkpoint_lines=4)
    env.lane.checkpoint_bytes = 1 << 30
    assert _checkpointed_lines(env, env.submit(10)) == [4, 8, 10]


def test_bytes_bound_a_checkpoint_when_the_lines_do_not():
    env = Env(checkpoint_lines=1000)
    env.lane.checkpoint_bytes = 1  # every line is past the budget: a checkpoint after each
    # (and the last one at the end of the file, with nothing new)
    assert _checkpointed_lines(env, env.submit(5)) == [1, 2, 3, 4, 5, 5]
