"""The loop with in-memory Kafka edges and the real model: every event answered once, bugs
dead-lettered, failures inside a step leave without snapshot or commit, partitions resuming
elsewhere are reported. (Checkpoint rules: tests/unit/persist/test_checkpoint.py.)"""

from __future__ import annotations

import json
import logging

import pytest
from fakes import TOPIC
from runner_harness import Harness
from runner_harness import values_for as _values

from daemon.service.runner import StateUntrusted
from daemon.settings import KafkaSettings, StreamSettings


@pytest.mark.parametrize("reason", ["shutdown"])
def test_shutdown_answers_every_event_and_commits_the_final_snapshot(tmp_path, reason):
    h = Harness(tmp_path, _values(5))
    h.runner.run(until=lambda r: h.source.drained)
    answered = len(h.publisher.predictions()) + len(h.publisher.dead)
    assert answered == len(h.source.messages) == h.runner.consumed
    assert h.source.commits[-1] == {(TOPIC, 0): len(h.source.messages)}
    assert h.source.closed


def _answered(h) -> dict[int, str]:
    """Map each answered offset to 'prediction' or its dead-letter reason; fail on a duplicate."""
    answers: dict[int, str] = {}
    for value in h.publisher.predictions():
        offset = json.loads(value)["source_offset"]
        assert offset not in answers, f"offset {offset} answered twice"
        answers[offset] = "prediction"
    for offset, reason, _ in h.publisher.dead:
        assert offset not in answers, f"offset {offset} answered twice"
        answers[offset] = reason
    return answers


def test_a_bug_handling_one_event_dead_letters_it_as_internal_error_and_the_loop_goes_on(
    tmp_path, caplog
):
    h = Harness(tmp_path, _values(6))
    ingest = h.learner.ingest

    def flaky(event, partition, offset):
        if offset == 4:
            raise KeyError("boom")  # before the learner touched anything for this event
        return ingest(event, partition, offset)

    h.learner.ingest = flaky
    with caplog.at_level(logging.INFO):
        h.runner.run(until=lambda r: h.source.drained)
    answers = _answered(h)
    assert sorted(answers) == list(range(len(h.source.messages)))
    assert answers[4] == "internal_error"
    [(_, _, detail)] = [d for d in h.publisher.dead if d[0] == 4]
    assert detail.startswith("KeyError")
    assert (
        h.metrics.registry.get_sample_value(
            "lstmd_events_rejected_total", {"reason": "internal_error"}
        )
        == 1
    )
    errors = [r for r in caplog.records if r.getMessage().startswith("internal error")]
    assert len(errors) == 1 and errors[0].offset == 4 and errors[0].partition == 0
    assert h.source.commits[-1] == {(TOPIC, 0): len(h.source.messages)}  # graceful end


def test_a_failure_inside_a_train_step_exits_without_snapshot_or_commit(tmp_path, caplog):
    h = Harness(tmp_path, _values(8))
    h.turns(3)
    snapshots, commits = h.store.list(), list(h.source.commits)
    assert snapshots and commits

    def broken(*args):
        raise FloatingPointError("the step blew up half-way")

    h.model.train_steps = broken
    h.source.append(_values(4, start=8))
    with caplog.at_level(logging.INFO), pytest.raises(StateUntrusted):
        h.runner.run()
    assert h.store.list() == snapshots and h.source.commits == commits
    assert h.source.closed
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)


def test_an_unexpected_failure_outside_one_event_skips_the_shutdown_snapshot(tmp_path):
    h = Harness(tmp_path, _values(8), every_steps=1000)  # only a shutdown would snapshot

    def crash(runner):
        if runner.consumed >= 10:
            raise RuntimeError("a bug in the loop")

    with pytest.raises(RuntimeError):
        h.runner.run(on_poll=crash)
    assert h.source.commits == [] and h.store.list() == []
    assert h.source.closed


def test_a_prediction_that_can_never_be_published_dead_letters_its_event(tmp_path):
    kafka = KafkaSettings(max_request_size=4096, dead_letter_max_bytes=1024)
    long_key = "k" * 5000
    values = [
        *_values(3),
        json.dumps({"key": long_key, "ts": 9, "features": [1.0], "target": [1.0]}).encode(),
        *_values(3, start=10),
    ]
    h = Harness(
        tmp_path,
        values,
        kafka=kafka,
        stream=StreamSettings(max_batch_wait_ms=0, max_key_bytes=8000),
    )
    h.runner.run(until=lambda r: h.source.drained)
    answers = _answered(h)
    assert sorted(answers) == list(range(len(values)))
    assert answers[9] == "prediction_too_large"
    assert all(len(v) <= 4096 for _, _, v in h.publisher.sent)
    assert h.source.commits[-1] == {(TOPIC, 0): len(values)}


def test_a_partition_resuming_past_deleted_records_is_reported_once(tmp_path, caplog):
    h = Harness(tmp_path, _values(6))
    h.runner.checkpoint.processed[0] = 3
    h.source.beginning = 9  # retention removed offsets 3..8
    h.runner.moves.on_assign({(TOPIC, 0)})  # seeks to 3; the fake broker then serves from 9
    h.source.position = 9
    with caplog.at_level(logging.INFO):
        h.turns(3)
    assert (
        h.metrics.registry.get_sample_value("lstmd_input_offsets_missing_total", {"partition": "0"})
        == 1
    )
    [line] = [r for r in caplog.records if r.getMessage().startswith("input offset")]
    assert (line.partition, line.expected, line.actual) == (0, 3, 9)


def test_a_recreated_shorter_topic_is_reported(tmp_path, caplog):
    h = Harness(tmp_path, _values(6))
    h.runner.checkpoint.processed[0] = 50
    h.runner.moves.on_assign({(TOPIC, 0)})
    h.source.position = 0  # the broker reset the position: the topic holds fewer records
    with caplog.at_level(logging.INFO):
        h.turns(1)
    [line] = [r for r in caplog.records if r.getMessage().startswith("input offset")]
    assert (line.expected, line.actual) == (50, 0)


def test_a_rollback_restores_a_partition_that_arrived_from_the_state_topic_after_the_snapshot(
    tmp_path,
):
    # The snapshot rolled back to holds no partition 0: it arrived later, restored from the
    # state topic at offset 9. A roll-back must bring it back from there and seek the consumer
    # to 9; before, its store was dropped and the consumer went on past everything after 9.
    import dataclasses

    from fakes import FakeStateTopic

    from daemon.core.learner_state import export_partition
    from daemon.persist.partition_state import pack_keys

    donor = Harness(tmp_path / "donor", _values(3))
    donor.turns(2)
    state = dataclasses.replace(pack_keys(*export_partition(donor.learner, 0)), offset=9)
    topic = FakeStateTopic()
    topic.states[0] = state
    h = Harness(tmp_path, _values(12), state_topic=topic, every_steps=1000)
    h.checkpointer.save({})  # the last good snapshot: from before partition 0 was assigned
    h.runner.moves.on_assign({(TOPIC, 0)})
    assert h.source.seeks[-1] == ((TOPIC, 0), 9) and len(h.learner.stores[0]) == 3
    h.turns(2)  # consumes past offset 9
    assert h.source.position > 9
    h.learner.consecutive_nonfinite = h.settings.model.max_nonfinite_steps
    h.source.batch = 0  # a poll that trains nothing, so the divergence stands
    h.runner._poll_once()  # the divergence check rolls back
    assert h.metric("lstmd_rollbacks_total") == 1
    assert h.source.seeks[1:] == [((TOPIC, 0), 9)] and h.source.position == 9
    assert h.runner.checkpoint.processed.get(0, 9) >= 9
    assert sorted(h.learner.stores[0].row_of) == sorted(donor.learner.stores[0].row_of)
