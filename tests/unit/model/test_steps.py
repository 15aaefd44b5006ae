"""Several train steps in one compiled call (`StatefulLSTM.train_steps`) against one call per step.

Two twin models (same seed) take the same steps: one step at a time through `train_step_and_infer`
(or `train_step` where no forecast waits), with the keys' states kept on the host as the learner
keeps them, and all at once through `train_steps`. Everything must agree bit for bit: losses,
predictions, forecasts, the keys' states and states ahead, the weights and Adam's moments,
including across rows that start a new sequence and a step whose loss is not finite.
"""

from __future__ import annotations

import numpy as np
import pytest

from daemon.core.events import Event
from daemon.model.lstm import StatefulLSTM
from daemon.settings import ModelSettings

B, T, F, R, UNITS, N_TARGETS = 4, 3, 3, 5, 8, 2
KEYS = 6


def _settings(layers: int) -> ModelSettings:
    return ModelSettings(
        n_features=F,
        n_targets=N_TARGETS,
        target_index=(0, 1),
        units=UNITS,
        layers=layers,
        batch_size=B,
        infer_batch_size=R,
        window=T,
        learning_rate=0.01,
        clipnorm=1.0,
        seed=11,
    )


def _plan(rng: np.random.Generator, steps: int, nonfinite_step: int | None) -> list[dict]:
    """Return steps over KEYS keys: each a train batch and maybe the forecasts before it."""
    plan = []
    for s in range(steps):
        rows = rng.choice(KEYS, size=rng.integers(1, B + 1), replace=False).tolist()
        x = np.zeros((B, T, F), np.float32)
        y = np.zeros((B, T, N_TARGETS), np.float32)
        mask = np.zeros((B, T), bool)
        for b in range(len(rows)):
            length = rng.integers(1, T + 1)
            x[b, :length] = rng.normal(size=(length, F))
            y[b, :length] = rng.normal(size=(length, N_TARGETS))
            mask[b, :length] = True
        if s == nonfinite_step:
            y[0, 0, 0] = np.nan
        starts = [bool(rng.random() < 0.3) for _ in rows]
        step = {"keys": rows, "starts": starts, "x": x, "y": y, "mask": mask, "forecast": None}
        if s % 3 != 1:  # some steps have no forecast waiting
            fkeys = rng.choice(KEYS, size=rng.integers(1, R + 1), replace=False).tolist()
            fx = np.zeros((R, T + 1, F), np.float32)
            fmask = np.zeros((R, T + 1), bool)
            for r in range(len(fkeys)):
                length = rng.integers(1, T + 2)
                fx[r, :length] = rng.normal(size=(length, F))
                fmask[r, :length] = True
            fstarts = [bool(rng.random() < 0.3) for _ in fkeys]
            step["forecast"] = {"keys": fkeys, "starts": fstarts, "x": fx, "mask": fmask}
        plan.append(step)
    return plan


def _one_call_per_step(model: StatefulLSTM, plan: list[dict], states: np.ndarray, ahead):
    """Run the plan one call per step, keeping the keys' states on the host as the learner does."""
    states, ahead = states.copy(), ahead.copy()
    out = []
    for step in plan:
        start = np.zeros(model.state_shape, np.float32)
        for b, (key, starts) in enumerate(zip(step["keys"], step["starts"], strict=True)):
            if not starts:
                start[:, :, b] = states[key]
        f = step["forecast"]
        forecast = None
        if f is None:
            loss, preds, new = model.train_step(step["x"], step["y"], step["mask"], start)
        else:
            fstart = np.zeros((model.settings.layers, 2, R, UNITS), np.float32)
            for r, (key, starts) in enumerate(zip(f["keys"], f["starts"], strict=True)):
                if not starts:
                    fstart[:, :, r] = ahead[key]
            loss, preds, new, forecast, fnew = model.train_step_and_infer(
                step["x"], step["y"], step["mask"], start, f["x"], f["mask"], fstart
            )
            for r, key in enumerate(f["keys"]):
                ahead[key] = fnew[:, :, r]
        if np.isfinite(loss):
            for b, key in enumerate(step["keys"]):
                states[key] = new[:, :, b]
        out.append((loss, preds, forecast))
    return out, states, ahead


def _one_call(model: StatefulLSTM, plan: list[dict], states: np.ndarray, ahead: np.ndarray):
    """Run the plan in one `train_steps` call: slot k is key k; padding rows take spare slots."""
    s = len(plan)
    trash = np.zeros((max(B, R), *states.shape[1:]), np.float32)
    x = np.stack([p["x"] for p in plan])
    y = np.stack([p["y"] for p in plan])
    mask = np.stack([p["mask"] for p in plan])
    starts = np.ones((s, B), bool)
    slots = np.tile(KEYS + np.arange(B, dtype=np.int32), (s, 1))
    forecast = np.zeros(s, bool)
    fx = np.zeros((s, R, T + 1, F), np.float32)
    fmask = np.zeros((s, R, T + 1), bool)
    fstarts = np.ones((s, R), bool)
    fslots = np.tile(KEYS + np.arange(R, dtype=np.int32), (s, 1))
    for i, step in enumerate(plan):
        n = len(step["keys"])
        slots[i, :n], starts[i, :n] = step["keys"], step["starts"]
        f = step["forecast"]
        if f is not None:
            n = len(f["keys"])
            forecast[i], fx[i], fmask[i] = True, f["x"], f["mask"]
            fslots[i, :n], fstarts[i, :n] = f["keys"], f["starts"]
    losses, preds, table, forecasts, ahead_table = model.train_steps(
        x,
        y,
        mask,
        starts,
        slots,
        np.concatenate([states, trash[:B]]),
        forecast,
        fx,
        fmask,
        fstarts,
        fslots,
        np.concatenate([ahead, trash[:R]]),
    )
    return losses, preds, forecasts, table[:KEYS], ahead_table[:KEYS]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("nonfinite_step", [None, 2])
def test_s_steps_in_one_call_equal_s_calls_bit_for_bit(layers, nonfinite_step) -> None:
    rng = np.random.default_rng(layers)
    single, several = StatefulLSTM(_settings(layers)), StatefulLSTM(_settings(layers))
    states = rng.normal(scale=0.5, size=(KEYS, layers, 2, UNITS)).astype(np.float32)
    ahead = rng.normal(scale=0.5, size=(KEYS, layers, 2, UNITS)).astype(np.float32)
    for round_ in range(2):  # the second call starts from what the first left
        plan = _plan(rng, steps=6, nonfinite_step=nonfinite_step if round_ == 0 else None)
        expected, states_1, ahead_1 = _one_call_per_step(single, plan, states, ahead)
        losses, preds, forecasts, states_s, ahead_s = _one_call(several, plan, states, ahead)
        if round_ == 0 and nonfinite_step is not None:
            assert np.isnan(expected[nonfinite_step][0]) and np.isnan(losses[nonfinite_step])
        for i, (loss, pred, forecast) in enumerate(expected):
            np.testing.assert_array_equal(losses[i], np.float32(loss))
            np.testing.assert_array_equal(preds[i], pred)
            if forecast is not None:
                np.testing.assert_array_equal(forecasts[i], forecast)
        np.testing.assert_array_equal(states_s, states_1)
        np.testing.assert_array_equal(ahead_s, ahead_1)
        for a, b in zip(single.get_weights(), several.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        moments_1, moments_s = single.optimizer_state(), several.optimizer_state()
        for name, value in moments_1.items():
            np.testing.assert_array_equal(moments_s[name], value)
        states, ahead = states_1, ahead_1
    assert several.steps_traces == 1


def test_a_nonfinite_step_inside_a_call_keeps_its_keys_states_and_the_weights() -> None:
    rng = np.random.default_rng(3)
    model = StatefulLSTM(_settings(1))
    states = rng.normal(scale=0.5, size=(KEYS, 1, 2, UNITS)).astype(np.float32)
    ahead = np.zeros_like(states)
    plan = _plan(rng, steps=1, nonfinite_step=0)
    weights = model.get_weights()
    losses, _, _, states_after, _ = _one_call(model, plan, states, ahead)
    assert np.isnan(losses[0])
    np.testing.assert_array_equal(states_after, states)
    for a, b in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_forecast_row_is_the_same_in_8_16_or_32_rows() -> None:
    # The learner lays a call's forecasts in as few rows as they need (`padded_rows`, from 8
    # up): that must not change any row's numbers.
    rng = np.random.default_rng(5)
    model = StatefulLSTM(_settings(1).model_copy(update={"infer_batch_size": 32}))
    states = np.zeros((B + 1, 1, 2, UNITS), np.float32)
    step = _plan(rng, steps=1, nonfinite_step=None)[0]
    fx = rng.normal(size=(32, T + 1, F)).astype(np.float32)
    fmask = rng.random((32, T + 1)) < 0.8
    ahead = rng.normal(size=(32, 1, 2, UNITS)).astype(np.float32)
    weights = model.get_weights()
    out = {}
    for rows in (8, 16, 32):
        model.set_weights(weights)
        _, _, _, forecasts, new_ahead = model.train_steps(
            step["x"][None],
            step["y"][None],
            step["mask"][None],
            np.ones((1, B), bool),
            np.arange(B, dtype=np.int32)[None],
            states,
            np.ones(1, bool),
            fx[None, :rows],
            fmask[None, :rows],
            np.zeros((1, rows), bool),
            np.arange(rows, dtype=np.int32)[None],
            ahead[:rows],
        )
        out[rows] = forecasts[0, :8], new_ahead[:8]
    for rows in (16, 32):
        np.testing.assert_array_equal(out[rows][0], out[8][0])
        np.testing.assert_array_equal(out[rows][1], out[8][1])


class _Poisoned:
    """The real model, with one step's targets made NaN (its loss is then not finite)."""

    def __init__(self, model: StatefulLSTM, poisoned_step: int) -> None:
        self.model, self.poisoned_step = model, poisoned_step
        self.steps_run, self.calls = 0, 0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def train_steps(self, x, y, *rest):
        k = self.poisoned_step - self.steps_run
        if 0 <= k < len(x):
            y = y.copy()
            y[k] = np.nan
        self.steps_run += len(x)
        self.calls += 1
        return self.model.train_steps(x, y, *rest)


def _learner_stream() -> list[Event]:
    """Three keys with resets and an idle gap, then one hot key, then supervised events."""
    rng = np.random.default_rng(9)
    events = []
    for day in range(40):
        for k, key in enumerate(("a", "b", "c")):
            ts = 86_400.0 * day + (10 * 86_400.0 if key == "c" and day >= 20 else 0.0)
            value = 100.0 * (k + 1) + 10 * np.sin(day + k) + rng.normal()
            events.append(Event(key, ts, np.array([value]), None, key == "b" and day % 13 == 12))
    for half_hour in range(300):  # a hot key: many windows per poll
        value = 50 + 5 * np.sin(half_hour / 8) + rng.normal()
        events.append(Event("hot", 1800.0 * half_hour, np.array([value]), None, half_hour == 150))
    for day in range(30):
        events.append(Event("s", 86_400.0 * day, np.array([float(day)]), np.array([2.0 * day])))
    return events


def _learn(steps_per_call: int, monkeypatch) -> tuple:
    from daemon.core import train_step
    from daemon.core.learner import OnlineLearner
    from daemon.model.lstm import build_model
    from daemon.settings import Settings, StreamSettings

    monkeypatch.setattr(train_step, "MAX_STEPS_PER_CALL", steps_per_call)
    settings = Settings(
        model=ModelSettings(n_features=1, n_targets=1, target_index=(0,), batch_size=4),
        stream=StreamSettings(max_batch_wait_ms=0, reset_after_idle_s=5 * 86_400.0),
    )
    model = _Poisoned(build_model(settings), poisoned_step=7)
    learner = OnlineLearner(settings, model, clock=lambda: 0.0)
    published = []
    for offset, event in enumerate(_learner_stream()):
        assert learner.ingest(event, offset % 2, offset) is None
        if offset % 50 == 49:
            learner.end_of_poll()
            published += learner.take_outbox()
    learner.drain()
    published += learner.take_outbox()
    return learner, model, published


def test_the_learner_trains_bit_for_bit_as_with_one_call_per_step(monkeypatch) -> None:
    # Resets (flagged and after an idle gap) and a non-finite step fall between the steps of
    # one call; everything published and kept must be what one call per step gives.
    one, one_model, one_published = _learn(1, monkeypatch)
    several, several_model, published = _learn(16, monkeypatch)
    assert several_model.calls < several.step == one.step == one_model.calls
    assert several.nonfinite_losses == one.nonfinite_losses == 1
    assert (several.infer_calls, several.infer_in_steps) == (one.infer_calls, one.infer_in_steps)
    assert several.resets == one.resets and sum(one.resets.values()) >= 3
    assert (several.trained_events, several.untrained) == (one.trained_events, one.untrained)
    assert len(published) == len(one_published) == len(_learner_stream())
    for a, b in zip(published, one_published, strict=True):
        assert (a.key, a.offset, a.step, a.mode) == (b.key, b.offset, b.step, b.mode)
        assert np.asarray(a.prediction).tobytes() == np.asarray(b.prediction).tobytes()
    for a, b in zip(several_model.get_weights(), one_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for partition, store in several.stores.items():
        other = one.stores[partition]
        for key, row in store.row_of.items():
            np.testing.assert_array_equal(store.states[row], other.states[other.row_of[key]])
            np.testing.assert_array_equal(store.ahead[row], other.ahead[other.row_of[key]])
