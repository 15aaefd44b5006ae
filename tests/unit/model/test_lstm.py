"""Tests for the explicit-state LSTM of daemon.model.lstm."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from daemon.model.lstm import StatefulLSTM
from daemon.settings import ModelSettings

B, T, F, UNITS, N_TARGETS = 4, 5, 3, 8, 2


def _settings(layers: int = 1, **overrides) -> ModelSettings:
    values = dict(
        n_features=F,
        n_targets=N_TARGETS,
        target_index=(0, 1),
        units=UNITS,
        layers=layers,
        batch_size=B,
        infer_batch_size=B,
        window=T,
        learning_rate=0.01,
        clipnorm=1.0,
        seed=7,
    )
    return ModelSettings(**{**values, **overrides})


def _batch(
    rng: np.random.Generator, steps: int = T, outputs: int = N_TARGETS
) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(B, steps, F)).astype(np.float32)
    y = rng.normal(size=(B, steps, outputs)).astype(np.float32)
    return x, y


def _random_states(model: StatefulLSTM, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(scale=0.5, size=model.state_shape).astype(np.float32)


def _full_mask(steps: int = T) -> np.ndarray:
    return np.ones((B, steps), bool)


@pytest.fixture(scope="module")
def model2() -> StatefulLSTM:
    """Share one two-layer model across tests that only compare within their own calls."""
    return StatefulLSTM(_settings(layers=2))


def _reference(settings: ModelSettings) -> keras.Model:
    """Build Keras' own stateful LSTM stack with the same shapes as ours."""
    inputs = keras.Input(batch_shape=(B, T, F))
    seq = inputs
    for _ in range(settings.layers):
        seq = keras.layers.LSTM(settings.units, stateful=True, return_sequences=True)(seq)
    outputs = settings.n_targets * settings.horizon
    return keras.Model(inputs, keras.layers.Dense(outputs)(seq))


REFERENCE_LOSSES = {
    "mse": keras.losses.MeanSquaredError(),
    "huber": keras.losses.Huber(delta=1.0),
    "mae": keras.losses.MeanAbsoluteError(),
}


def _reference_step(ref: keras.Model, optimizer, x: np.ndarray, y: np.ndarray, loss_kind: str):
    with tf.GradientTape() as tape:
        preds = ref(x, training=True)
        loss = REFERENCE_LOSSES[loss_kind](y, preds)
    grads = tape.gradient(loss, ref.trainable_variables)
    optimizer.apply_gradients(zip(grads, ref.trainable_variables, strict=True))
    return float(loss), preds.numpy()


@pytest.mark.parametrize(
    ("layers", "horizon", "loss_kind"),
    [(1, 1, "huber"), (2, 1, "huber"), (1, 3, "huber"), (1, 1, "mse")],
)
def test_matches_keras_stateful_lstm_across_batches_and_reset(
    layers: int, horizon: int, loss_kind: str
) -> None:
    settings = _settings(layers=layers, horizon=horizon, loss=loss_kind)
    ours = StatefulLSTM(settings)
    ref = _reference(settings)
    ref.set_weights(ours.get_weights())
    ref_opt = keras.optimizers.Adam(
        learning_rate=settings.learning_rate, clipnorm=settings.clipnorm
    )
    rng = np.random.default_rng(layers)
    # One stream per row, cut into consecutive batches: states must carry across the cuts.
    xs, ys = _batch(rng, steps=5 * T, outputs=N_TARGETS * horizon)
    states = ours.zero_states()
    for k in range(5):
        if k == 3:
            for layer in ref.layers:
                if isinstance(layer, keras.layers.LSTM):
                    layer.reset_state()
            states[...] = 0.0
        x, y = xs[:, k * T : (k + 1) * T], ys[:, k * T : (k + 1) * T]
        loss, preds, states = ours.train_step(x, y, _full_mask(), states)
        ref_loss, ref_preds = _reference_step(ref, ref_opt, x, y, loss_kind)
        np.testing.assert_allclose(preds, ref_preds, atol=1e-5, err_msg=f"batch {k}")
        assert loss == pytest.approx(ref_loss, abs=1e-5), f"batch {k}"
    for w, ref_w in zip(ours.get_weights(), ref.get_weights(), strict=True):
        np.testing.assert_allclose(w, ref_w, atol=1e-5)


def test_steps_trace_once_across_fills_resets_and_swaps(model2: StatefulLSTM) -> None:
    rng = np.random.default_rng(1)
    states = _random_states(model2, rng)
    for i in range(12):
        x, y = _batch(rng)
        lengths = rng.integers(0, T + 1, size=B)
        lengths[i % B] = 0  # Always one idle row.
        mask = np.arange(T)[None, :] < lengths[:, None]
        _, _, states = model2.train_step(x, y, mask, states)
        states[:, :, rng.integers(B)] = 0.0  # A reset.
        states = states[:, :, rng.permutation(B)]  # Evictions and swaps.
        xi = rng.normal(size=(B, T + 1, F))
        mi = np.arange(T + 1)[None, :] < (lengths[:, None] + 1)
        model2.infer(xi, mi, states)
        model2.train_step_and_infer(x, y, mask, states, xi, mi, states)
    assert (model2.train_traces, model2.infer_traces, model2.fused_traces) == (1, 1, 1)


def test_fully_masked_row_keeps_its_state_exactly(model2: StatefulLSTM) -> None:
    rng = np.random.default_rng(2)
    states = _random_states(model2, rng)
    mask = _full_mask()
    mask[1] = False
    x, y = _batch(rng)
    _, _, trained = model2.train_step(x, y, mask, states)
    _, inferred = model2.infer(
        rng.normal(size=(B, T + 1, F)), _full_mask(T + 1) & mask[:, :1], states
    )
    np.testing.assert_array_equal(trained[:, :, 1], states[:, :, 1])
    np.testing.assert_array_equal(inferred[:, :, 1], states[:, :, 1])
    assert not np.array_equal(trained[:, :, 0], states[:, :, 0])


def _run_first_steps(model: StatefulLSTM, x: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Run the functional model on `x` alone (no padding) and return the final states."""
    flat = [states[i, j] for i in range(model.settings.layers) for j in (0, 1)]
    _, *final = model.keras_model([x, np.ones(x.shape[:2], bool), *flat])
    return np.stack([np.stack([h, c]) for h, c in zip(final[::2], final[1::2], strict=True)])


@pytest.mark.parametrize("k", [1, 3])
def test_row_masked_after_k_steps_ends_as_if_only_k_steps_ran(model2: StatefulLSTM, k: int) -> None:
    rng = np.random.default_rng(3)
    states = _random_states(model2, rng)
    x, y = _batch(rng)
    mask = _full_mask()
    mask[:, k:] = False
    expected = _run_first_steps(model2, x[:, :k], states)
    xi = np.concatenate([x, rng.normal(size=(B, 1, F))], axis=1)
    _, inferred = model2.infer(xi, np.pad(mask, ((0, 0), (0, 1))), states)
    np.testing.assert_allclose(inferred, expected, atol=1e-6)
    # The train step's states come from its forward pass, before the weights move.
    _, _, trained = model2.train_step(x, y, mask, states)
    np.testing.assert_allclose(trained, expected, atol=1e-6)


def test_masked_steps_add_no_loss_and_no_gradient() -> None:
    first, second = StatefulLSTM(_settings(layers=2)), StatefulLSTM(_settings(layers=2))
    for w1, w2 in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(w1, w2)  # Seeded init is deterministic.
    rng = np.random.default_rng(4)
    states = _random_states(first, rng)
    x, y = _batch(rng)
    mask = np.arange(T)[None, :] < np.array([[T], [2], [0], [4]])
    x2, y2 = x.copy(), y.copy()
    x2[~mask] = rng.normal(size=x2[~mask].shape) * 10
    y2[~mask] = rng.normal(size=y2[~mask].shape) * 10
    loss1, preds1, states1 = first.train_step(x, y, mask, states)
    loss2, preds2, states2 = second.train_step(x2, y2, mask, states)
    assert loss1 == loss2
    np.testing.assert_array_equal(preds1[mask], preds2[mask])
    np.testing.assert_array_equal(states1, states2)
    for w1, w2 in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(w1, w2)


def test_loss_is_zero_when_nothing_is_real(model2: StatefulLSTM) -> None:
    # Weights may still move here: Adam's momentum from earlier steps does not need a gradient.
    rng = np.random.default_rng(5)
    loss, _, _ = model2.train_step(*_batch(rng), np.zeros((B, T), bool), model2.zero_states())
    assert loss == 0.0


def test_predictions_come_from_the_forward_pass_before_the_update(model2: StatefulLSTM) -> None:
    rng = np.random.default_rng(6)
    x, y = _batch(rng)
    states = _random_states(model2, rng)
    xi = np.concatenate([x, np.zeros((B, 1, F), np.float32)], axis=1)
    expected, _ = model2.infer(xi, _full_mask(T + 1), states)
    _, preds, _ = model2.train_step(x, y, _full_mask(), states)
    np.testing.assert_allclose(preds, expected[:, :T], atol=1e-6)
    after, _ = model2.infer(xi, _full_mask(T + 1), states)
    assert not np.allclose(after[:, :T], preds, atol=1e-6)


def test_infer_changes_neither_weights_nor_input_states(model2: StatefulLSTM) -> None:
    rng = np.random.default_rng(7)
    states = _random_states(model2, rng)
    kept = states.copy()
    weights = model2.get_weights()
    model2.infer(rng.normal(size=(B, T + 1, F)), _full_mask(T + 1), states)
    np.testing.assert_array_equal(states, kept)
    for w, w0 in zip(model2.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize("t", [0, 2, T - 1])
def test_infer_is_causal(model2: StatefulLSTM, t: int) -> None:
    rng = np.random.default_rng(8)
    states = _random_states(model2, rng)
    x = rng.normal(size=(B, T + 1, F)).astype(np.float32)
    changed = x.copy()
    changed[:, t + 1 :] = rng.normal(size=changed[:, t + 1 :].shape)
    preds, _ = model2.infer(x, _full_mask(T + 1), states)
    preds_changed, _ = model2.infer(changed, _full_mask(T + 1), states)
    np.testing.assert_array_equal(preds[:, : t + 1], preds_changed[:, : t + 1])
    assert not np.allclose(preds[:, t + 1 :], preds_changed[:, t + 1 :])


def test_rejects_wrong_shapes(model2: StatefulLSTM) -> None:
    x, y = _batch(np.random.default_rng(9))
    with pytest.raises(ValueError, match="x must have shape"):
        model2.train_step(x[:, :-1], y[:, :-1], _full_mask()[:, :-1], model2.zero_states())
    with pytest.raises(ValueError, match="states must have shape"):
        model2.infer(np.zeros((B, T + 1, F)), _full_mask(T + 1), model2.zero_states()[:1])


def test_export_round_trip_predicts_like_infer(model2: StatefulLSTM, tmp_path) -> None:
    rng = np.random.default_rng(10)
    x, y = _batch(rng)
    model2.train_step(x, y, _full_mask(), model2.zero_states())  # Export trained weights.
    path = tmp_path / "model.keras"
    model2.export(path)
    loaded = keras.saving.load_model(path)
    states = _random_states(model2, rng)
    xi = rng.normal(size=(B, T + 1, F)).astype(np.float32)
    mask = np.arange(T + 1)[None, :] < np.array([[T + 1], [3], [0], [1]])
    preds, new = model2.infer(xi, mask, states)
    flat = [states[i, j] for i in range(2) for j in (0, 1)]
    out = [np.asarray(o) for o in loaded([xi, mask, *flat])]
    np.testing.assert_allclose(out[0], preds, atol=1e-6)
    np.testing.assert_allclose(np.reshape(out[1:], new.shape), new, atol=1e-6)


def test_nonfinite_loss_skips_the_update_and_reports_nan():
    settings = ModelSettings(n_features=2, n_targets=1, units=4, batch_size=2, window=3)
    model = StatefulLSTM(settings)
    before = model.get_weights()
    optimizer_before = model.optimizer_state()
    x = np.ones((2, 3, 2), np.float32)
    y = np.full((2, 3, 1), 3e38, np.float32)  # its square overflows float32: loss is inf
    mask = np.ones((2, 3), bool)
    loss, _, _ = model.train_step(x, y, mask, model.zero_states())
    assert np.isnan(loss)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    for name, value in model.optimizer_state().items():
        np.testing.assert_array_equal(value, optimizer_before[name])
    loss, _, _ = model.train_step(x, np.zeros_like(y), mask, model.zero_states())
    assert np.isfinite(loss) and model.train_traces == 1


def test_the_flat_call_gives_what_the_concrete_functions_public_call_gives() -> None:
    """The steps call TensorFlow's flat entry point (an internal API); the public one must agree.

    Two models built alike run the same train steps, one through each call: losses,
    predictions, states and the weights after every update must be identical.
    """
    flat, public = StatefulLSTM(_settings(layers=2)), StatefulLSTM(_settings(layers=2))
    assert flat._train._call_flat is not None, "this TensorFlow has no flat call"

    def through_public_call(step):
        def call(*arrays):
            return step._fn(
                *[
                    tf.constant(np.asarray(a, d))
                    for a, (_, d, _) in zip(arrays, step._specs, strict=True)
                ]
            )

        return call

    public._train = through_public_call(public._train)
    public._infer = through_public_call(public._infer)
    rng = np.random.default_rng(11)
    states = _random_states(flat, rng)
    for _ in range(3):
        x, y = _batch(rng)
        mask = _full_mask()
        mask[1, 3:] = False
        got, expected = flat.train_step(x, y, mask, states), public.train_step(x, y, mask, states)
        assert got[0] == expected[0]
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[2], expected[2])
        states = got[2]
    for w_flat, w_public in zip(flat.get_weights(), public.get_weights(), strict=True):
        np.testing.assert_array_equal(w_flat, w_public)
    x = rng.normal(size=(B, T + 1, F)).astype(np.float32)
    got, expected = (
        flat.infer(x, _full_mask(T + 1), states),
        public.infer(x, _full_mask(T + 1), states),
    )
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_train_step_and_infer_is_infer_then_train_step_in_one_call() -> None:
    """The fused call answers forecasts with the weights from before its update, bit for bit.

    Two models built alike: one runs `infer` then `train_step` as two calls, the other the
    fused call. Outputs, the weights and Adam's moments after every step must be identical, so
    a forecast answered inside a step is the one its own call would have given.
    """
    fused, apart = StatefulLSTM(_settings(layers=2)), StatefulLSTM(_settings(layers=2))
    rng = np.random.default_rng(12)
    states = _random_states(fused, rng)
    ahead = _random_states(fused, rng)
    for _ in range(3):
        x, y = _batch(rng)
        mask = _full_mask()
        mask[2, 1:] = False
        fx = rng.normal(size=(B, T + 1, F)).astype(np.float32)
        fmask = np.arange(T + 1)[None, :] < np.array([[T + 1], [2], [0], [1]])
        got = fused.train_step_and_infer(x, y, mask, states, fx, fmask, ahead)
        expected = (*apart.infer(fx, fmask, ahead), *apart.train_step(x, y, mask, states))
        np.testing.assert_array_equal(got[3], expected[0])  # the forecasts
        np.testing.assert_array_equal(got[4], expected[1])
        assert got[0] == expected[2]  # the loss
        np.testing.assert_array_equal(got[1], expected[3])
        np.testing.assert_array_equal(got[2], expected[4])
        states, ahead = got[2], got[4]
    for w_fused, w_apart in zip(fused.get_weights(), apart.get_weights(), strict=True):
        np.testing.assert_array_equal(w_fused, w_apart)
    for name, value in fused.optimizer_state().items():
        np.testing.assert_array_equal(value, apart.optimizer_state()[name])
    assert fused.fused_traces == 1 and (fused.train_traces, fused.infer_traces) == (1, 1)


def test_warm_up_leaves_the_model_as_an_unwarmed_twin_for_every_later_step() -> None:
    """Warming up runs real steps; afterwards weights, Adam's state and every output are the
    twin's, bit for bit, and no step traces again."""
    warmed, cold = StatefulLSTM(_settings(layers=2)), StatefulLSTM(_settings(layers=2))
    weights, optimizer = warmed.get_weights(), warmed.optimizer_state()
    warmed.warm_up()
    for after, before in zip(warmed.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(after, before)
    for name, value in warmed.optimizer_state().items():
        np.testing.assert_array_equal(value, optimizer[name])
    rng = np.random.default_rng(13)
    states = _random_states(warmed, rng)
    for _ in range(3):
        x, y = _batch(rng)
        got, expected = (
            warmed.train_step(x, y, _full_mask(), states),
            cold.train_step(x, y, _full_mask(), states),
        )
        assert got[0] == expected[0]
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[2], expected[2])
        states = got[2]
    for name, value in warmed.optimizer_state().items():
        np.testing.assert_array_equal(value, cold.optimizer_state()[name])
    assert (warmed.train_traces, warmed.infer_traces, warmed.fused_traces) == (1, 1, 1)
