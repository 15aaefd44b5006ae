"""Fuzzing the real loop with the real compiled model (issue 11): whatever the bytes, every
message is answered exactly once, the loop stays alive, and the learner ends exactly where a run
fed only the good events ends: rejected input leaves no trace in keys, states or weights."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
from fakes import FakePublisher, FakeSource
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.core.events import Event, decode_event
from daemon.core.learner import OnlineLearner
from daemon.model.lstm import build_model
from daemon.persist.snapshots import SnapshotInfo
from daemon.service.health import Health
from daemon.service.metrics import DaemonMetrics
from daemon.service.runner import Runner
from daemon.settings import ModelSettings, Settings, StreamSettings

F = 2
CONFIG = Settings(
    model=ModelSettings(n_features=F, units=4, batch_size=3, window=2),
    # No wall clock anywhere: both runs must take exactly the same steps.
    stream=StreamSettings(max_batch_wait_ms=0, max_future_s=0, max_key_bytes=64),
)
KEYS = ["a", "b", "c", "d"]
BIG = 10**400  # no float holds it
PATTERNS: set[bytes] = set()  # every distinct message tried, for the report


@st.composite
def good_events(draw) -> dict:
    event = {
        "key": draw(st.sampled_from(KEYS)),
        "ts": draw(st.integers(0, 60)),
        "features": draw(st.lists(st.floats(-100, 100), min_size=F, max_size=F)),
    }
    if draw(st.booleans()):
        event["target"] = [draw(st.floats(-100, 100))]
    return event


anything = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**30), 10**30),
        st.just(BIG),
        st.just(-BIG),
        st.floats(),
        st.sampled_from([1e308, 5e-324, -0.0, 3.5e38]),
        st.text(max_size=6),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _dump(event: dict) -> bytes:
    return json.dumps(event, allow_nan=True).encode()


@st.composite
def hostile(draw) -> bytes:
    """A good event, damaged in one of the ways the issue lists."""
    event = draw(good_events())
    text = _dump(event).decode()
    kind = draw(st.integers(0, 9))
    if kind == 0:  # big integers in every numeric field
        field = draw(st.sampled_from(["ts", "features", "target", "reset"]))
        event[field] = [BIG] * F if field == "features" else [BIG] if field == "target" else BIG
        return _dump(event)
    if kind == 1:  # a lone surrogate, written as JSON spells it
        return text.replace(f'"key": "{event["key"]}"', '"key": "x\\ud800"').encode()
    if kind == 2:  # deep nesting
        depth = draw(st.integers(100, 5000))
        return b'{"key": "a", "ts": 1, "features": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == 3:  # BOMs and UTF-16 / UTF-32
        encoding = draw(st.sampled_from(["utf-8-sig", "utf-16", "utf-16-be", "utf-32"]))
        return text.encode(encoding)
    if kind == 4:  # a field given twice: the last value wins, valid or not
        return text.replace("{", '{"ts": "never", ', 1).encode()
    if kind == 5:  # very long keys, from the field or the Kafka message key
        event["key"] = "k" * draw(st.integers(65, 5000))
        return _dump(event)
    if kind == 6:  # wrong types anywhere
        event[draw(st.sampled_from(["key", "ts", "features", "target", "reset"]))] = draw(anything)
        return _dump(event)
    if kind == 7:  # huge and tiny numbers
        event["features"] = [draw(st.sampled_from([1e300, -1e39, 5e-324, 3.4e38])), 1.0]
        return _dump(event)
    if kind == 8:
        return draw(st.binary(max_size=48))
    return _dump(draw(anything))


messages = st.lists(
    st.one_of(good_events().map(_dump), good_events().map(_dump), hostile()),
    min_size=1,
    max_size=40,
)


class _Checkpointer:
    def __init__(self, learner):
        self.learner = learner

    def save(self, offsets, extra=None):
        return SnapshotInfo("snap", ".", self.learner.step, 0.0, dict(offsets), 0, True)


@pytest.fixture(scope="module")
def model():
    built = build_model(CONFIG)
    initial = built.get_weights(), built.optimizer_state()
    yield built, initial
    print(f"\ndistinct byte patterns tried: {len(PATTERNS)}", file=sys.stderr)


def _run(model, initial, values: list[bytes]):
    """Run the real loop from the model's initial state over `values`; return what it did."""
    model.set_weights(initial[0])
    model.set_optimizer_state(initial[1])
    learner = OnlineLearner(CONFIG, model)
    source, publisher = FakeSource(values, batch=5), FakePublisher()
    runner = Runner(
        CONFIG, source, publisher, learner, DaemonMetrics(), _Checkpointer(learner), Health(60, 0.0)
    )
    runner.run(until=lambda r: source.drained)
    return runner, learner, publisher, model.get_weights()


@given(messages)
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
def test_bad_input_leaves_no_trace_in_the_real_model(model, values):
    built, initial = model
    PATTERNS.update(values)
    runner, learner, publisher, weights = _run(built, initial, values)
    predicted = [json.loads(v)["source_offset"] for v in publisher.predictions()]
    dead = [offset for offset, _, _ in publisher.dead]
    assert sorted(predicted + dead) == list(range(len(values)))  # each exactly once
    assert runner.consumed == len(values) == runner.predictions_sent + runner.dead_lettered
    assert runner._health.liveness(time.monotonic())[0] and "internal_error" not in runner.rejected

    good = [v for v in values if isinstance(decode_event(v, None, F, 1, max_key_bytes=64), Event)]
    _, clean, _, clean_weights = _run(built, initial, good)
    assert learner.trained_events == clean.trained_events and learner.step == clean.step
    for key in KEYS:
        ours, theirs = learner.key_state(key), clean.key_state(key)
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(weights, clean_weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)
