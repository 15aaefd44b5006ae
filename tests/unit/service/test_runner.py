"""The loop with in-memory Kafka edges and the real model: offsets follow acknowledged
snapshots, disk faults back off and recover, divergence rolls back to the last good snapshot."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from fakes import TOPIC, FakePublisher, FakeSource

from daemon.core.learner import OnlineLearner
from daemon.core.learner import OnlineLearner as _Learner  # noqa: F401  (patched per test)
from daemon.model.lstm import build_model
from daemon.persist.checkpointing import Checkpointer
from daemon.persist.snapshots import SnapshotStore
from daemon.service.health import Health
from daemon.service.metrics import DaemonMetrics
from daemon.service.runner import Runner, StateUntrusted
from daemon.settings import (
    KafkaSettings,
    ModelSettings,
    Settings,
    SnapshotSettings,
    StreamSettings,
)

KEYS = ["a", "b", "c"]


def _values(days: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps({"key": k, "ts": d, "features": [float(d % 5 + i)], "target": [1.0]}).encode()
        for d in range(start, start + days)
        for i, k in enumerate(KEYS)
    ]


class Harness:
    def __init__(self, tmp_path, values, kafka=None, stream=None, **snapshot):
        snapshot.setdefault("every_steps", 2)
        snapshot.setdefault("every_s", 0)
        self.settings = Settings(
            kafka=kafka or KafkaSettings(),
            model=ModelSettings(n_features=1, units=4, batch_size=2, window=2),
            stream=stream or StreamSettings(max_batch_wait_ms=0),
            snapshot=SnapshotSettings(directory=tmp_path / "snaps", **snapshot),
        )
        self.model = build_model(self.settings)
        self.learner = OnlineLearner(self.settings, self.model)
        self.store = SnapshotStore(self.settings.snapshot.directory, keep=3)
        self.checkpointer = Checkpointer(self.store, self.learner, self.model, self.settings.model)
        self.metrics = DaemonMetrics()
        self.source = FakeSource(values)
        self.publisher = FakePublisher()
        self.clock = [0.0]
        self.runner = Runner(
            self.settings,
            self.source,
            self.publisher,
            self.learner,
            self.metrics,
            self.checkpointer,
            Health(60, 0.0),
            clock=lambda: self.clock[0],
        )

    def turns(self, n: int) -> None:
        for _ in range(n):
            self.runner._poll_once()
            self.clock[0] += 1.0

    def metric(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0


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
    good = h.store.list()[-1]
    weights = h.model.get_weights()
    train_step = h.model.train_step

    def diverged(*args):
        _, predictions, states = train_step(*args)
        return math.nan, predictions, states * np.nan

    h.model.train_step = diverged
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
    h.model.train_step = train_step
    h.turns(6)
    assert h.source.drained and h.learner.consecutive_nonfinite == 0
    assert all(np.isfinite(w).all() for w in h.model.get_weights())
    assert len(weights) == len(h.model.get_weights())


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

    h.model.train_step = broken
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

    def diverged(x, y, mask, states):
        return math.nan, np.zeros((x.shape[0], x.shape[1], 1), np.float32), states

    h.model.train_step = diverged  # every step from now on is non-finite
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


def test_a_partition_resuming_past_deleted_records_is_reported_once(tmp_path, caplog):
    h = Harness(tmp_path, _values(6))
    h.runner._processed[0] = 3
    h.source.beginning = 9  # retention removed offsets 3..8
    h.runner.on_assign({(TOPIC, 0)})  # seeks to 3; the fake broker then serves from 9
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
    h.runner._processed[0] = 50
    h.runner.on_assign({(TOPIC, 0)})
    h.source.position = 0  # the broker reset the position: the topic holds fewer records
    with caplog.at_level(logging.INFO):
        h.turns(1)
    [line] = [r for r in caplog.records if r.getMessage().startswith("input offset")]
    assert (line.expected, line.actual) == (50, 0)
