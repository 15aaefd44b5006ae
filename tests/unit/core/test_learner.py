"""The learner's bookkeeping, with a numpy toy model: one prediction per event, keys sharing the
B rows without losing state, the batch-close rule, batched forecasts, every reset branch,
ordering and prequential scoring."""

import numpy as np
import pytest
from toy_model import ToyModel

from daemon.core.events import Event, Reason
from daemon.core.learner import OnlineLearner
from daemon.core.pending import HAS_Y
from daemon.settings import ModelSettings, Settings, StreamSettings


def _settings(batch_size=4, window=3, n_features=2, **stream):
    stream.setdefault("max_batch_wait_ms", 0)
    return Settings(
        model=ModelSettings(
            n_features=n_features,
            n_targets=1,
            target_index=(0,),
            batch_size=batch_size,
            window=window,
        ),
        stream=StreamSettings(**stream),
    )


def _learner(settings):
    model = ToyModel.for_settings(settings)
    return OnlineLearner(settings, model, clock=lambda: 0.0), model


def _event(key, ts, value, target=None, reset=False):
    return Event(
        key,
        float(ts),
        np.array([value, ts % 7], float),
        None if target is None else np.array([target], float),
        reset,
    )


def _stream(keys, days, seed=0):
    rng = np.random.default_rng(seed)
    scale = {key: 10.0 ** (i % 3) for i, key in enumerate(keys)}
    return [
        _event(key, day, scale[key] * (5 + np.sin(day) + rng.normal(0, 0.1)))
        for day in range(days)
        for key in keys
    ]


def _feed(learner, events):
    published = []
    for offset, event in enumerate(events):
        assert learner.ingest(event, 0, offset) is None
        if offset % 7 == 6:
            learner.end_of_poll()
        published += learner.take_outbox()
    learner.drain()
    return published + learner.take_outbox()


@pytest.mark.parametrize("batch_size", [2, 4, 16])
def test_every_event_gets_exactly_one_prediction(batch_size):
    learner, _ = _learner(_settings(batch_size=batch_size))
    events = _stream(["a", "b", "c", "d", "e"], days=12)
    published = _feed(learner, events)
    assert sorted(p.offset for p in published) == list(range(len(events)))
    assert all(p.mode == "forecast" and p.target is None for p in published)


def test_supervised_events_get_predictions_from_the_train_step():
    learner, model = _learner(_settings(batch_size=3, window=2))
    events = [_event(k, d, d, target=d + 1) for d in range(6) for k in "ab"]
    published = _feed(learner, events)
    assert sorted(p.offset for p in published) == list(range(len(events)))
    assert model.infer_calls == 0  # no eviction, so nothing needed an inference pass
    assert all(p.mode == "supervised" and p.target is not None for p in published)


def test_keys_sharing_few_rows_end_with_the_state_each_would_have_alone():
    keys = [f"k{i}" for i in range(7)]
    events = _stream(keys, days=10)
    shared, _ = _learner(_settings(batch_size=2))
    _feed(shared, events)
    assert shared.step > 10 and shared.keys_in_store() == 7
    for key in keys:
        alone, _ = _learner(_settings(batch_size=2))
        _feed(alone, [e for e in events if e.key == key])
        np.testing.assert_allclose(shared.key_state(key), alone.key_state(key), atol=1e-6)


def test_store_past_max_keys_drops_the_least_recent_key_which_restarts_from_zero():
    learner, _ = _learner(_settings(batch_size=2, max_keys=2))
    events = [_event(k, d, d + 1) for d in range(4) for k in "ab"]
    _feed(learner, events)
    assert learner.key_state("a").any()
    learner.ingest(_event("c", 10, 1), 0, 100)  # "a" is the least recently active
    assert learner.resets["dropped"] == 1 and learner.keys_in_store() == 2
    assert learner.key_state("a") is None and learner.key_state("b") is not None
    learner.ingest(_event("a", 11, 1), 0, 101)  # back, from zero: "b" goes now
    assert not learner.key_state("a").any() and learner.key_state("b") is None


def test_batch_closes_when_b_keys_hold_a_full_window():
    learner, model = _learner(_settings(batch_size=2, window=3))
    # Forecast mode: a key's event becomes trainable when its successor arrives.
    for offset, event in enumerate(_stream(["a", "b", "c"], days=3)):
        learner.ingest(event, 0, offset)
    assert learner.step == 0  # each key holds 2 trainable events
    learner.ingest(_event("a", 3, 1), 0, 9)
    assert learner.step == 0  # one full key of three with trainable events
    learner.ingest(_event("b", 3, 1), 0, 10)
    assert learner.step == 1
    assert model.train_calls[0].sum(axis=1).tolist() == [3, 3]  # two rows, a full window each


def test_few_keys_train_as_soon_as_every_waiting_key_is_full():
    learner, model = _learner(_settings(batch_size=4, window=3))
    for offset, event in enumerate(_stream(["a"], days=4)):
        learner.ingest(event, 0, offset)
    assert learner.step == 1 and model.train_calls[0].sum() == 3


def test_a_hot_key_does_not_wait_for_cold_ones_without_bound():
    learner, _ = _learner(_settings(batch_size=2, window=3))
    learner.ingest(_event("cold", 0, 1), 0, 0)
    learner.ingest(_event("cold", 1, 1), 0, 1)  # one trainable event, never full
    for day in range(6):
        learner.ingest(_event("hot", day, day), 0, 2 + day)
    assert learner.step == 0  # 5 trainable: below two windows
    learner.ingest(_event("hot", 6, 6), 0, 8)
    assert learner.step == 1


def test_forecasts_of_a_poll_take_one_inference_call_per_chunk_depth():
    settings = _settings(batch_size=2, window=50)
    model = ToyModel.for_settings(settings, infer_shape=(64, 4))
    learner = OnlineLearner(settings, model, clock=lambda: 0.0)
    keys = [f"k{i}" for i in range(40)]
    for offset, event in enumerate(_stream(keys, days=6)):  # 6 events per key: 2 chunks of 4
        learner.ingest(event, 0, offset)
    learner.end_of_poll()
    assert model.infer_calls == 2
    assert len(learner.take_outbox()) == 240


class _Drifting(ToyModel):
    """The toy model whose output weights move with every train step, as learning would."""

    def train_step(self, x, y, mask, states):
        out = super().train_step(x, y, mask, states)
        self.wo = self.wo + 0.5
        return out


def _forecasts_through(infer_rows):
    settings = _settings(batch_size=2, window=2)
    model = _Drifting.for_settings(settings, infer_shape=(infer_rows, 3))
    learner = OnlineLearner(settings, model, clock=lambda: 0.0)
    published = {}
    for offset, event in enumerate(_stream(["a", "b", "c"], days=8)):
        learner.ingest(event, 0, offset)  # one long poll: batches close inside it
        published.update({p.offset: p.prediction for p in learner.take_outbox()})
    learner.drain()
    published.update({p.offset: p.prediction for p in learner.take_outbox()})
    return published, learner, model


def test_forecasts_waiting_when_a_batch_closes_are_answered_with_the_weights_before_it():
    """Inside the step's call when they fit one inference batch, else in calls of their own
    first: either way each forecast is the one the weights before the step give."""
    fused, learner, model = _forecasts_through(infer_rows=64)  # three keys: always one batch
    assert learner.step >= 3 and learner.infer_in_steps == model.infer_calls_in_steps
    assert learner.infer_in_steps >= learner.step - 1
    apart, learner, model = _forecasts_through(infer_rows=1)  # >1 key waiting: own calls
    assert learner.infer_calls > learner.step
    assert sorted(fused) == sorted(apart) == list(range(24))
    for offset in fused:
        np.testing.assert_allclose(fused[offset], apart[offset], rtol=1e-6)


def test_reset_flag_starts_a_new_sequence_from_zero_state():
    # Statistics and the derived features' history outlive a reset (they describe the key, not
    # the sequence): only the LSTM state is compared, so neither may differ here.
    plain = {"normalise": False, "seasons": (), "derived_calendar": False}
    learner, _ = _learner(_settings(batch_size=1, window=4, **plain))
    events = [_event("a", d, d) for d in range(3)] + [_event("a", 3, 0.5, reset=True)]
    events += [_event("a", d, d) for d in range(4, 9)]
    _feed(learner, events)
    assert learner.resets["event_flag"] == 1
    fresh, _ = _learner(_settings(batch_size=1, window=4, **plain))
    _feed(fresh, [_event("a", 3, 0.5)] + [_event("a", d, d) for d in range(4, 9)])
    np.testing.assert_allclose(learner.key_state("a"), fresh.key_state("a"), atol=1e-6)


def test_idle_gap_resets_the_key():
    learner, _ = _learner(_settings(batch_size=2, reset_after_idle_s=10))
    _feed(learner, [_event("a", 0, 1), _event("a", 5, 1), _event("a", 100, 1)])
    assert learner.resets["idle_gap"] == 1


def test_periodic_reset_zeroes_every_state():
    learner, _ = _learner(_settings(batch_size=2, window=2, reset_every_steps=1))
    _feed(learner, _stream(["a", "b", "c"], days=4))
    assert learner.resets["periodic"] >= 2
    for key in "abc":
        assert not learner.key_state(key).any()


def test_event_back_in_time_for_its_key_is_rejected_and_not_trained():
    learner, _ = _learner(_settings())
    assert learner.ingest(_event("a", 5, 1), 0, 0) is None
    rejection = learner.ingest(_event("a", 4, 1), 0, 1)
    assert rejection.reason == Reason.OUT_OF_ORDER
    assert learner.ingest(_event("b", 4, 1), 0, 2) is None  # other keys have their own clock
    assert learner.ingest(_event("a", 5, 2), 0, 3) is None  # equal ts is allowed


def test_prequential_scores_model_and_naive_on_the_same_events():
    learner, _ = _learner(_settings(batch_size=2, window=2))
    events = [_event("a", d, v) for d, v in enumerate([1.0, 3.0, 2.0, 5.0, 4.0])]
    published = {p.offset: p for p in _feed(learner, events)}
    naive = np.mean(np.abs(np.diff([1.0, 3.0, 2.0, 5.0, 4.0])))
    assert learner.prequential.count == 4
    assert learner.prequential.naive_mae == pytest.approx(naive)
    model_mae = np.mean([abs(published[t].prediction[0] - v) for t, v in enumerate([3, 2, 5, 4])])
    assert learner.prequential.model_mae == pytest.approx(model_mae)


def test_wall_clock_close_trains_after_max_batch_wait():
    now = [0.0]
    settings = _settings(window=10, max_batch_wait_ms=100)
    model = ToyModel.for_settings(settings)
    learner = OnlineLearner(settings, model, clock=lambda: now[0])
    learner.ingest(_event("a", 0, 1, target=1), 0, 0)
    learner.end_of_poll()
    assert learner.step == 0
    now[0] = 0.2
    learner.end_of_poll()
    assert learner.step == 1 and len(learner.take_outbox()) == 1


def test_difference_scaling_learns_the_step_from_the_current_level():
    learner, _ = _learner(_settings(batch_size=2, window=8, target_scaling="difference"))
    values = [10.0, 12.0, 11.0, 15.0]
    for day, value in enumerate(values):
        learner.ingest(_event("a", day, value), 0, day)
    store = learner.stores[0]
    third = store.queue(store.row_of["a"])[2]
    steps = np.diff(values[:3])  # the steps known when event 2 arrived
    assert store.events.location[third][0] == 11.0
    assert store.events.spread[third][0] == pytest.approx(np.std(steps))
    assert store.events.y[third][0] == pytest.approx((15.0 - 11.0) / np.std(steps))


def test_difference_scaling_ignores_the_step_across_a_reset():
    learner, _ = _learner(_settings(batch_size=2, window=8, target_scaling="difference"))
    for day, value in enumerate([1.0, 2.0, 3.0]):
        learner.ingest(_event("a", day, value), 0, day)
    learner.ingest(_event("a", 3, 1000.0, reset=True), 0, 3)
    store = learner.stores[0]
    row = store.row_of["a"]
    assert store.step_stats.count[row] == 2 and store.step_stats.mean[row][0] == 1.0


@pytest.mark.parametrize("target_scaling", ["difference", "level"])
def test_inputs_normalised_in_rounds_equal_those_normalised_event_by_event(target_scaling):
    # A learner normalises inputs of many keys' events at once (in rounds) when it can. One
    # whose stores are read after every event normalises them one at a time: every published
    # number, every statistic and every pending input must match to the bit.
    settings = _settings(batch_size=3, window=2, target_scaling=target_scaling)
    keys = [f"k{i}" for i in range(7)]
    events = _stream(keys, 12, seed=3)
    events[30] = _event(events[30].key, events[30].ts, 4.0, reset=True)
    events += [
        _event(key, 12 + day, 3.0 + day, target=2.0 * day) for day in range(3) for key in keys[:2]
    ]
    results = []
    for settle_every_event in (False, True):
        learner, _ = _learner(settings)
        published = []
        for offset, event in enumerate(events):
            assert learner.ingest(event, offset % 2, offset) is None
            if settle_every_event:
                learner.stores  # noqa: B018 - reading the stores settles every event's inputs
            if offset % 9 == 8:
                learner.end_of_poll()
                published += learner.take_outbox()
        results.append((published + learner.take_outbox(), learner.stores, learner))
    (batched, stores, learner), (single, single_stores, single_learner) = results
    assert learner.step == single_learner.step > 0
    assert len(batched) == len(single) > 0
    for a, b in zip(batched, single, strict=True):
        assert (a.key, a.offset, a.step) == (b.key, b.offset, b.step)
        assert np.asarray(a.prediction).tobytes() == np.asarray(b.prediction).tobytes()
    for partition, store in stores.items():
        other = single_stores[partition]
        for name in ("count", "mean", "m2"):
            assert getattr(store.feature_stats, name).tobytes() == (
                getattr(other.feature_stats, name).tobytes()
            )
        for row in store.live_rows().tolist():
            mine, theirs = store.queue(row), other.queue(row)
            assert store.events.x[mine].tobytes() == other.events.x[theirs].tobytes()
            # A target is defined once known: an event waiting for it holds whatever its
            # recycled id held before (ids are handed back when a step has run).
            known = store.events.flags[mine] & HAS_Y != 0
            assert known.tolist() == (other.events.flags[theirs] & HAS_Y != 0).tolist()
            mine = [e for e, k in zip(mine, known.tolist(), strict=True) if k]
            theirs = [e for e, k in zip(theirs, known.tolist(), strict=True) if k]
            assert store.events.y[mine].tobytes() == other.events.y[theirs].tobytes()
