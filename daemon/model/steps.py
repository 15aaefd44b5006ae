"""Several train steps in one compiled call, in order, each as its own call would have run it.

TensorFlow spends most of a small step (B 32 × T 4, 16 units) dispatching ops one call at a time
and converting its inputs and outputs; a while loop over S steps inside one graph pays that once.
This is Keras' `steps_per_execution` for a stream whose batches close one at a time
(DESIGN §4: "several closed batches may run in one compiled call, in order, with results
identical to separate calls").

A key may sit in several of the call's steps, so its state cannot come from the host for each
one: the call holds a state table, one row per key of the call (`slots`), gathered from the host
stores before it and written back after it. Step s starts each of its rows from the key's row of
the table, or from zeros where the row starts a sequence, and writes the new state back to the
table, unless its loss was not finite: then the update was skipped and the keys keep the state
they had, as a step of its own leaves the host's rows alone. Forecasts waiting before step s run
first, from a second table of the keys' states ahead (`ahead`). Every row of a batch is laid
exactly as a call of its own would lay it (padding rows start from zeros), so each step computes
the same numbers; `tests/unit/model/test_steps.py` holds the call to S separate calls, bit for
bit.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def steps_signature(
    batch: int, window: int, n_inputs: int, outputs: int, layers: int, units: int
) -> list[tf.TensorSpec]:
    """Return the input signature of `run_steps`.

    The step count, the keys and the forecasts' rows are left open: the forecasts waiting
    before a step often fill a few rows of an inference batch, and a row's forecast does not
    depend on how many rows run beside it (from 8 rows up; `tests/unit/model/test_steps.py`).
    """
    state_row = (layers, 2, units)
    rows = None
    return [
        tf.TensorSpec((None, batch, window, n_inputs), tf.float32, name="x"),
        tf.TensorSpec((None, batch, window, outputs), tf.float32, name="y"),
        tf.TensorSpec((None, batch, window), tf.bool, name="mask"),
        tf.TensorSpec((None, batch), tf.bool, name="starts"),
        tf.TensorSpec((None, batch), tf.int32, name="slots"),
        tf.TensorSpec((None, *state_row), tf.float32, name="states"),
        tf.TensorSpec((None,), tf.bool, name="forecast"),
        tf.TensorSpec((None, rows, window + 1, n_inputs), tf.float32, name="forecast_x"),
        tf.TensorSpec((None, rows, window + 1), tf.bool, name="forecast_mask"),
        tf.TensorSpec((None, rows), tf.bool, name="forecast_starts"),
        tf.TensorSpec((None, rows), tf.int32, name="forecast_slots"),
        tf.TensorSpec((None, *state_row), tf.float32, name="ahead"),
    ]


def _rows(table: tf.Tensor, slots: tf.Tensor, starts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Return the table's rows at `slots` as [layers, 2, rows, units]: as kept, and as started
    (zeros where `starts`)."""
    kept = tf.transpose(tf.gather(table, slots), (1, 2, 0, 3))
    started = tf.where(starts[None, None, :, None], tf.zeros_like(kept), kept)
    return kept, started


def _put(table: tf.Tensor, slots: tf.Tensor, states: tf.Tensor) -> tf.Tensor:
    """Write [layers, 2, rows, units] states to the table's rows at `slots` (distinct)."""
    return tf.tensor_scatter_nd_update(table, slots[:, None], tf.transpose(states, (2, 0, 1, 3)))


def run_steps(
    model: Any,
    x: tf.Tensor,
    y: tf.Tensor,
    mask: tf.Tensor,
    starts: tf.Tensor,
    slots: tf.Tensor,
    states: tf.Tensor,
    forecast: tf.Tensor,
    fx: tf.Tensor,
    fmask: tf.Tensor,
    fstarts: tf.Tensor,
    fslots: tf.Tensor,
    ahead: tf.Tensor,
) -> tuple[tf.Tensor, ...]:
    """Build the graph of S steps (S = the length of `x`), each an inference then a train step.

    Args:
        model: the `StatefulLSTM` whose `_infer_graph` and `_train_graph` make one step.
        x, y, mask: [S, B, T, ...]: step s's batch.
        starts: [S, B]: the row starts from zeros (a sequence start, or padding).
        slots: [S, B]: the row's key in `states`; the rows of one step are distinct.
        states: [K, layers, 2, units]: each key's committed state before the call.
        forecast: [S]: forecasts wait before step s (else its forecast inputs are ignored).
        fx, fmask, fstarts, fslots: [S, R, ...]: the forecasts' batch before step s, as above.
        ahead: [K', layers, 2, units]: each forecast key's state ahead before the call.

    Returns:
        losses [S] (NaN where the update was skipped), predictions [S, B, T, outputs], the
        states table after the call, forecasts [S, R, T + 1, outputs] (zeros where none
        waited), and the ahead table after the call.
    """
    count = tf.shape(x)[0]
    outputs = y.shape[-1]
    forecast_shape = (None, fx.shape[2], outputs)  # rows as the call lays them

    def step(i, states, ahead, losses, predictions, forecasts):
        def infer():
            _, start = _rows(ahead, fslots[i], fstarts[i])
            out, new = model._infer_graph(fx[i], fmask[i], start)
            return out, _put(ahead, fslots[i], new)

        def no_forecast():
            rows = tf.shape(fx)[1:3]
            return tf.zeros(tf.concat([rows, [outputs]], 0), tf.float32), ahead

        # Program order is execution order (automatic control dependencies): the forecasts
        # read the weights before this step's update writes them.
        out, ahead = tf.cond(forecast[i], infer, no_forecast)
        kept, start = _rows(states, slots[i], starts[i])
        loss, preds, new = model._train_graph(x[i], y[i], mask[i], start)
        # A skipped update (non-finite loss) leaves the keys' states as they were.
        states = _put(states, slots[i], tf.where(tf.math.is_finite(loss), new, kept))
        return (
            i + 1,
            states,
            ahead,
            losses.write(i, loss),
            predictions.write(i, preds),
            forecasts.write(i, out),
        )

    def arrays(shape: tuple) -> tf.TensorArray:
        return tf.TensorArray(tf.float32, size=count, element_shape=shape)

    _, states, ahead, losses, predictions, forecasts = tf.while_loop(
        lambda i, *_: i < count,
        step,
        (
            tf.constant(0),
            states,
            ahead,
            arrays(()),
            arrays((*x.shape[1:3], outputs)),
            arrays(forecast_shape),
        ),
        # One step at a time: each step reads the weights the one before it wrote.
        parallel_iterations=1,
    )
    return losses.stack(), predictions.stack(), states, forecasts.stack(), ahead
