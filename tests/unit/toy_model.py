"""A tiny numpy recurrent model with the `StepModel` interface, for engine logic tests.

It honours the mask exactly like the real one (masked steps keep the state) and records calls, so
engine tests run in milliseconds without TensorFlow. It does not learn.
"""

import numpy as np

from daemon.core.derived import input_names


class ToyModel:
    def __init__(
        self, batch_size, n_features, n_targets=1, units=3, layers=1, seed=0, infer_shape=None
    ):
        rng = np.random.default_rng(seed)
        self.wx = rng.normal(0, 0.5, (n_features, units))
        self.wh = rng.normal(0, 0.5, (units, units))
        self.wo = rng.normal(0, 0.5, (units, n_targets))
        self.shape = (layers, 2, batch_size, units)
        # Any shape works here; a narrow width exercises the learner's chunking.
        self._infer_shape = infer_shape or (batch_size, 4)
        self.train_calls = []
        self.infer_calls = 0
        self.infer_calls_in_steps = 0

    @property
    def state_shape(self):
        return self.shape

    @classmethod
    def for_settings(cls, settings, **kwargs):
        """Build one whose inputs are the settings' features and derived features."""
        return cls(settings.model.batch_size, len(input_names(settings)), **kwargs)

    @property
    def infer_shape(self):
        return self._infer_shape

    def _run(self, x, mask, states):
        h = states[0, 0].astype(np.float64)
        c = states[0, 1].astype(np.float64)
        outputs = np.zeros((*x.shape[:2], self.wo.shape[1]))
        for t in range(x.shape[1]):
            new_h = np.tanh(x[:, t] @ self.wx + h @ self.wh)
            keep = mask[:, t][:, None]
            h = np.where(keep, new_h, h)
            c = np.where(keep, c + x[:, t].sum(axis=1, keepdims=True), c)
            outputs[:, t] = h @ self.wo
        new_states = states.copy()
        new_states[0, 0] = h
        new_states[0, 1] = c
        return outputs.astype(np.float32), new_states.astype(np.float32)

    def train_step(self, x, y, mask, states):
        self.train_calls.append(mask.copy())
        predictions, new_states = self._run(x, mask, states)
        err = ((predictions - y) ** 2).mean(axis=-1)
        loss = float((err * mask).sum() / max(mask.sum(), 1))
        return loss, predictions, new_states

    def train_step_and_infer(self, x, y, mask, states, fx, fmask, fstates):
        self.infer_calls_in_steps += 1
        forecast, forecast_states = self._run(fx, fmask, fstates)
        return (*self.train_step(x, y, mask, states), forecast, forecast_states)

    def infer(self, x, mask, states):
        self.infer_calls += 1
        return self._run(x, mask, states)

    def train_steps(
        self, x, y, mask, starts, slots, states, forecast, fx, fmask, fstarts, fslots, ahead
    ):
        """`StatefulLSTM.train_steps`: S steps in order, through this model's one-step calls."""
        states, ahead = states.copy(), ahead.copy()
        losses, predictions, forecasts = [], [], []
        for i in range(len(x)):
            start = _rows(states, slots[i], starts[i])
            if forecast[i]:
                fstart = _rows(ahead, fslots[i], fstarts[i])
                loss, preds, new, out, fnew = self.train_step_and_infer(
                    x[i], y[i], mask[i], start, fx[i], fmask[i], fstart
                )
                ahead[fslots[i]] = fnew.transpose(2, 0, 1, 3)
            else:
                loss, preds, new = self.train_step(x[i], y[i], mask[i], start)
                out = np.zeros((*fx.shape[1:3], preds.shape[-1]), np.float32)
            if np.isfinite(loss):
                states[slots[i]] = new.transpose(2, 0, 1, 3)
            losses.append(loss)
            predictions.append(preds)
            forecasts.append(out)
        return (
            np.array(losses, np.float32),
            np.stack(predictions),
            states,
            np.stack(forecasts),
            ahead,
        )


def _rows(table, slots, starts):
    """The table's rows at `slots` as [layers, 2, rows, units], zeros where `starts`."""
    rows = table[slots].transpose(1, 2, 0, 3).copy()
    rows[:, :, starts] = 0.0
    return rows
