"""The checkpoint rule with in-memory Kafka edges: offsets follow acknowledged, durable state
(local snapshot, then the state topic), failures back off and recover, failed commits are
retried, divergence rolls back to the last good snapshot; partitions move through the state
topic with their exact state."""

from __future__ import annotations

import json
import logging

import numpy as np
from fakes import TOPIC, FakeStateTopic
from runner_harness import Harness
from runner_harness import values_for as _values

from daemon.service.partitions import state_digest


def test_offsets_are_committed_only_with_a_snapshot_after_every_record_is_acknowledged(tmp_path):
    h = Harness(tmp_path, _values(10))
    h.publisher.failing = 2
    h.turns(3)  # fails at t=0, retries at t=1 and fails, backs off 2 s
    assert h.learner.step >= 2
    assert h.source.commits == [] and h.store.list() == []  # nothing acknowledged yet
    assert h.metric("lstmd_predictions_failed_total") == 2
    h.clock[0] += 10  # past the backoff
    h.turns(2)
    [info] = h.store.list()[-1:]
    assert h.source.commits[-1] == {(TOPIC, 0): info.offsets[0]}


def test_unwritable_snapshot_directory_keeps_running_backs_off_and_recovers(tmp_path, caplog):
    blocker = tmp_path / "snaps"
    blocker.write_text("a file where the directory should be")
    h = Harness(tmp_path, _values(40))
    with caplog.at_level(logging.INFO):
        h.turns(12)
    assert h.metric("lstmd_snapshot_failures_total") >= 2
    assert h.source.commits == []
    failures = [r for r in caplog.records if r.getMessage().startswith("snapshot failed")]
    assert len(failures) == 1  # one line per state change, not one per attempt
    assert h.metric("lstmd_snapshot_failures_total") < 12  # backed off
    blocker.unlink()
    h.clock[0] += 120
    with caplog.at_level(logging.INFO):
        h.turns(3)
    assert h.store.list() and h.source.commits
    assert "snapshots recovered" in [r.getMessage() for r in caplog.records]


def test_consecutive_nonfinite_steps_roll_back_to_the_last_good_snapshot(tmp_path, caplog):
    h = Harness(tmp_path, _values(8))
    h.turns(4)
    assert h.runner.checkpoint.save("steps")
    good = h.store.list()[-1]
    weights = h.model.get_weights()  # what `good` holds
    train_steps = h.model.train_steps
    rolled_back_to: list = []
    rollback = h.checkpointer.rollback

    def spy():
        info = rollback()
        rolled_back_to.append(h.model.get_weights())
        return info

    h.checkpointer.rollback = spy

    def diverged(*inputs):
        # Every step of the call reports a non-finite loss: the call keeps the keys' states.
        losses, predictions, _, forecasts, ahead = train_steps(*inputs)
        return losses * np.nan, predictions, inputs[5], forecasts, ahead

    h.model.train_steps = diverged
    h.source.append(_values(8, start=8))
    with caplog.at_level(logging.INFO):
        h.turns(3)
    assert h.metric("lstmd_nonfinite_losses_total") >= 3
    assert h.metric("lstmd_rollbacks_total") >= 1
    assert "training diverged; rolled back to the last good snapshot" in [
        r.getMessage() for r in caplog.records
    ]
    assert h.source.seeks[-1] == ((TOPIC, 0), good.offsets[0])
    assert not any(np.isnan(s.states).any() for s in h.learner.stores.values())
    h.model.train_steps = train_steps
    h.turns(6)
    assert h.source.drained and h.learner.consecutive_nonfinite == 0
    assert all(np.isfinite(w).all() for w in h.model.get_weights())
    assert rolled_back_to, "no roll-back happened"
    for restored, saved in zip(rolled_back_to[0], weights, strict=True):
        np.testing.assert_array_equal(restored, saved)


def test_a_failed_commit_is_retried_when_idle_even_with_nothing_new(tmp_path, caplog):
    h = Harness(tmp_path, _values(4))
    h.source.commit_failures = 1
    with caplog.at_level(logging.INFO):
        h.turns(4)  # the first snapshot's commit fails; the rest of the stream is idle turns
    assert h.metric("lstmd_commit_failures_total") == 1
    newest = h.store.list()[-1]
    assert h.source.commits and h.source.commits[-1] == {(TOPIC, 0): newest.offsets[0]}
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("offset commit failed") for m in messages) == 1
    assert "offset commit recovered" in messages


def test_a_failed_commit_is_retried_at_shutdown(tmp_path):
    h = Harness(tmp_path, _values(4))
    h.runner.run(until=lambda r: h.source.drained)
    done = dict(h.source.commits[-1])
    h2 = Harness(tmp_path / "again", _values(4))
    h2.source.commit_failures = 10**6
    h2.runner.run(until=lambda r: h2.source.drained)  # every commit fails while running
    assert h2.source.commits == []
    h2.source.commit_failures = 0
    h2.runner._shutdown()  # nothing new trained, yet the commit is retried
    assert h2.source.commits[-1] == done


def test_divergence_right_after_a_rollback_skips_the_batches_instead_of_looping(tmp_path, caplog):
    h = Harness(tmp_path, _values(8))
    h.turns(4)

    def diverged(x, y, mask, starts, slots, states, forecast, fx, fmask, fstarts, fslots, ahead):
        nothing = np.zeros((*x.shape[:3], 1), np.float32)
        forecasts = np.zeros((*fx.shape[:3], 1), np.float32)
        return np.full(len(x), np.nan, np.float32), nothing, states, forecasts, ahead

    h.model.train_steps = diverged  # every step from now on is non-finite
    h.source.append(_values(30, start=8))
    with caplog.at_level(logging.INFO):
        h.turns(60)
    assert h.source.drained
    assert h.metric("lstmd_rollbacks_total") == 1  # once, not once per replay
    assert h.metric("lstmd_diverged_batches_skipped_total") >= 3
    # A rollback replays, so some offsets are answered twice (at-least-once); none is missing.
    answered = {json.loads(v)["source_offset"] for v in h.publisher.predictions()}
    assert answered | {o for o, _, _ in h.publisher.dead} == set(range(len(h.source.messages)))
    assert h.learner.untrained > 0
    skipped = [r for r in caplog.records if r.getMessage().startswith("training diverged again")]
    assert skipped


def test_offsets_are_committed_only_after_the_state_topic_holds_the_state(tmp_path, caplog):
    topic = FakeStateTopic()
    topic.failing = 1
    h = Harness(tmp_path, _values(10), state_topic=topic)
    with caplog.at_level(logging.INFO):
        h.turns(1)  # the first checkpoint's state-topic write fails: nothing is committed
    assert h.store.list() and h.source.commits == [] and topic.writes == []
    assert "snapshot failed; retrying with backoff, last good snapshot kept" in [
        r.getMessage() for r in caplog.records
    ]
    h.clock[0] += 10  # past the backoff
    h.turns(3)
    assert topic.writes and h.source.commits
    # Every commit names an offset whose state the topic had already acknowledged.
    written = [offset for write in topic.writes for offset in write.values()]
    for commit in h.source.commits:
        assert commit[(TOPIC, 0)] in written
    assert h.runner.checkpoint.state_topic_lag() == {0: 0}


def test_a_revoked_partition_moves_to_its_new_owner_with_its_exact_state(tmp_path):
    topic = FakeStateTopic()
    old = Harness(tmp_path / "old", _values(6), state_topic=topic, every_steps=1000)
    old.turns(2)
    processed = old.runner.checkpoint.processed[0]
    before = state_digest(old.learner, 0)
    assert before != "empty" and old.source.commits == []
    old.runner.moves.on_revoke({(TOPIC, 0)})
    assert topic.states[0].offset == processed
    assert old.source.commits[-1] == {(TOPIC, 0): processed}
    old.runner.moves.on_assign(set())  # the partition went elsewhere
    assert 0 not in old.learner.stores and 0 not in old.runner.checkpoint.processed

    new = Harness(tmp_path / "new", _values(6), state_topic=topic, every_steps=1000)
    new.runner.moves.on_assign({(TOPIC, 0)})
    assert state_digest(new.learner, 0) == before  # not restarted from zero state
    assert new.source.seeks[-1] == ((TOPIC, 0), processed)
    assert new.metric("lstmd_partition_restore_duration_seconds_count") == 1
    assert new.learner.pending_events() == old_pending(topic)


def old_pending(topic: FakeStateTopic) -> int:
    return len(topic.states[0].arrays["ev_key"])


def test_a_partition_kept_across_a_rebalance_is_not_read_back(tmp_path):
    topic = FakeStateTopic()
    h = Harness(tmp_path, _values(6), state_topic=topic, every_steps=1000)
    h.turns(2)
    digest = state_digest(h.learner, 0)
    h.runner.moves.on_revoke({(TOPIC, 0)})
    topic.states.clear()  # a read would now find nothing
    h.runner.moves.on_assign({(TOPIC, 0)})
    assert state_digest(h.learner, 0) == digest
    assert h.metric("lstmd_partition_restore_duration_seconds_count") == 0


def test_lost_partitions_are_dropped_without_a_commit(tmp_path):
    topic = FakeStateTopic()
    h = Harness(tmp_path, _values(6), state_topic=topic, every_steps=1000)
    h.turns(2)
    h.runner.moves.on_lost({(TOPIC, 0)})
    assert h.source.commits == [] and topic.writes == []
    assert 0 not in h.learner.stores and h.runner.checkpoint.processed == {}


def test_a_newer_state_in_the_state_topic_wins_over_the_local_snapshot(tmp_path):
    topic = FakeStateTopic()
    other = Harness(tmp_path / "other", _values(9), state_topic=topic, every_steps=1000)
    other.turns(3)
    other.runner.moves.on_revoke({(TOPIC, 0)})
    h = Harness(tmp_path / "h", _values(9), state_topic=topic, every_steps=1000)
    h.runner.checkpoint.adopt(0, 2, durable=False)  # what an older local snapshot said
    h.runner.moves.on_assign({(TOPIC, 0)})
    assert h.source.seeks[-1] == ((TOPIC, 0), other.runner.checkpoint.processed[0])
    assert state_digest(h.learner, 0) == state_digest(other.learner, 0)
