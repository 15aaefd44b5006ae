"""Fuzzing the input with hypothesis: nothing escapes decoding or the loop, every message is
answered exactly once (a prediction or a dead letter), and the counters add up."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fakes import FakePublisher, FakeSource
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toy_model import ToyModel

from daemon.core.events import Event, Rejection, decode_event
from daemon.core.learner import OnlineLearner
from daemon.persist.snapshots import SnapshotInfo
from daemon.service.health import Health
from daemon.service.metrics import DaemonMetrics
from daemon.service.runner import Runner
from daemon.settings import ModelSettings, Settings, StreamSettings

F = 2

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "abc", ""]),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
keys = st.one_of(st.text(max_size=12), st.sampled_from(["a", "b", "c", "ключ", "🔑", ""]))
timestamps = st.one_of(
    st.floats(min_value=0, max_value=100),
    st.sampled_from([1e12, 4e9, -1.0, 50.0, 50.0, "2024-01-01T00:00:00Z", "tomorrow"]),
)


@st.composite
def events(draw) -> bytes:
    """Mostly well-formed events, each field sometimes replaced by anything."""
    event = {
        "key": draw(keys),
        "ts": draw(timestamps),
        "features": draw(st.lists(st.floats(-1e6, 1e6), min_size=F, max_size=F)),
    }
    if draw(st.booleans()):
        event["target"] = [draw(st.floats(-1e6, 1e6))]
    if draw(st.integers(0, 4)) == 0:
        event[draw(st.sampled_from(["key", "ts", "features", "target", "reset"]))] = draw(
            json_value
        )
    if draw(st.integers(0, 9)) == 0:
        event["features"] = [1e39, 1.0]  # overflows float32
    return json.dumps(event, allow_nan=True).encode()


messages = st.one_of(
    events(),
    st.binary(max_size=64),
    json_value.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.just(b"[" * 5000 + b"]" * 5000),
    st.just(b'{"key": "big", "ts": 1, "features": [1, 2], "pad": "' + b"x" * 1_100_000 + b'"}'),
    st.just(b""),
)


@given(st.binary(max_size=256), st.one_of(st.none(), st.binary(max_size=8)))
@settings(max_examples=300)
def test_decoding_random_bytes_never_raises(value, message_key):
    result = decode_event(value, message_key, F, 1)
    assert isinstance(result, Event | Rejection)


@given(events())
@settings(max_examples=300)
def test_decoded_events_are_valid_or_rejected_with_a_reason(value):
    result = decode_event(value, b"k", F, 1, latest_ts=1e10)
    if isinstance(result, Event):
        assert result.key and math.isfinite(result.ts) and result.ts <= 1e10
        assert result.features.shape == (F,) and all(map(math.isfinite, result.features))
    else:
        assert result.reason and result.detail


class _Checkpointer:
    def __init__(self, learner):
        self.learner = learner

    def save(self, offsets, extra=None):
        return SnapshotInfo("snap", Path("."), self.learner.step, 0.0, dict(offsets), 0, True)


@given(st.lists(messages, min_size=1, max_size=60), st.integers(1, 9))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_loop_answers_every_message_exactly_once(values, batch):
    config = Settings(
        model=ModelSettings(n_features=F, batch_size=3, window=2),
        stream=StreamSettings(max_batch_wait_ms=0, max_keys=2, reset_after_idle_s=30),
    )
    learner = OnlineLearner(config, ToyModel.for_settings(config))
    source, publisher = FakeSource(values, batch=batch), FakePublisher()
    runner = Runner(
        config,
        source,
        publisher,
        learner,
        DaemonMetrics(),
        _Checkpointer(learner),
        Health(60, 0.0),
    )
    runner.run(until=lambda r: source.drained)
    predicted = [json.loads(v)["source_offset"] for v in publisher.predictions()]
    dead = [offset for offset, _, _ in publisher.dead]
    assert sorted(predicted + dead) == list(range(len(values)))
    assert runner.consumed == len(values) == runner.predictions_sent + runner.dead_lettered
    for p in publisher.predictions():
        json.loads(p)  # valid JSON even for non-finite predictions
