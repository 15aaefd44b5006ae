"""The LSTM: a Keras stack driven with explicit, host-owned states.

Keras 3 has no `Model.reset_states()` and a stateful layer's `reset_state()` zeroes every row, so
the daemon keeps the recurrent states itself as one float32 array of shape
`[layers, 2, B, units]` (index 0 = h, 1 = c). Each step feeds them in as `initial_state` and reads
them back with `return_state=True`; per-row resets and key swaps are plain row edits on the host.
This is the only module of the package that imports TensorFlow or Keras.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from daemon.core.derived import input_names
from daemon.model.steps import run_steps, steps_signature
from daemon.settings import ModelSettings, Settings

H, C = 0, 1  # Index of h and c on axis 1 of the states array.

# Unrolling the time loop makes a small step ~1.5x faster on CPU (no while-loop overhead), but
# the graph and the trace time grow with T, so long windows keep the loop.
UNROLL_MAX_STEPS = 64


def _seeded(seed: int, offset: int) -> dict[str, keras.initializers.Initializer]:
    """Return the LSTM initializers with their own seeds, so init is deterministic per layer."""
    return {
        "kernel_initializer": keras.initializers.GlorotUniform(seed=seed + 2 * offset),
        "recurrent_initializer": keras.initializers.Orthogonal(seed=seed + 2 * offset + 1),
    }


def build_keras_model(settings: ModelSettings, n_inputs: int | None = None) -> keras.Model:
    """Build the functional model: `[x, mask, h_1, c_1, ...] -> [preds, h_1, c_1, ...]`.

    Batch and time are left open so the same weights serve the train window and the longer
    inference window; the compiled steps pin the shapes.

    Args:
        settings: the model section of the settings.
        n_inputs: input features per timestep; `settings.n_features` when not given.
    """
    x = keras.Input(shape=(None, n_inputs or settings.n_features), name="x")
    mask = keras.Input(shape=(None,), dtype="bool", name="mask")
    initial: list[keras.KerasTensor] = []
    final: list[keras.KerasTensor] = []
    seq = x
    for i in range(settings.layers):
        h0 = keras.Input(shape=(settings.units,), name=f"h{i}")
        c0 = keras.Input(shape=(settings.units,), name=f"c{i}")
        lstm = keras.layers.LSTM(
            settings.units,
            return_sequences=True,
            return_state=True,
            name=f"lstm{i}",
            **_seeded(settings.seed, i),
        )
        # The explicit mask makes padded timesteps carry the state through unchanged.
        seq, h, c = lstm(seq, mask=mask, initial_state=[h0, c0])
        initial += [h0, c0]
        final += [h, c]
    # One output per target and step ahead (target-major): H = `settings.horizon` values each.
    head = keras.layers.Dense(
        settings.n_targets * settings.horizon,
        kernel_initializer=keras.initializers.GlorotUniform(
            seed=settings.seed + 2 * settings.layers
        ),
        name="head",
    )
    return keras.Model(inputs=[x, mask, *initial], outputs=[head(seq), *final], name="lstmd")


@contextmanager
def _unrolled(model: keras.Model, steps: int) -> Iterator[None]:
    """Unroll the model's LSTM layers while tracing a step of `steps` timesteps.

    The functional model keeps `unroll=False` because its time axis is open (an exported model
    must accept any length); the compiled steps have a fixed length and may unroll.
    """
    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    for layer in lstms:
        layer.unroll = steps <= UNROLL_MAX_STEPS
    try:
        yield
    finally:
        for layer in lstms:
            layer.unroll = False


# Huber's threshold in normalised target units: targets are scaled by their key's spread, so
# errors beyond one spread (holidays, outliers) pull linearly instead of quadratically.
HUBER_DELTA = 1.0


def masked_loss(kind: str, y: tf.Tensor, preds: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Return the loss over real timesteps and all targets and steps, averaged over real timesteps.

    Args:
        kind: "huber" (delta HUBER_DELTA, as `keras.losses.Huber`), "mse" or "mae".
        y: targets [B, T, n_targets × H].
        preds: predictions [B, T, n_targets × H].
        mask: [B, T] bool, True on real timesteps.

    Returns:
        A scalar; zero when no timestep is real.
    """
    weights = tf.cast(mask, preds.dtype)
    error = tf.abs(preds - y)
    if kind == "mse":
        per_element = tf.square(error)
    elif kind == "mae":
        per_element = error
    else:
        quadratic = tf.minimum(error, HUBER_DELTA)
        per_element = 0.5 * tf.square(quadratic) + HUBER_DELTA * (error - quadratic)
    per_step = tf.reduce_mean(per_element, axis=-1)
    return tf.reduce_sum(per_step * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


class _CompiledStep:
    """A traced step that takes numpy arrays and checks their shapes against its signature."""

    def __init__(self, fn: tf.types.experimental.ConcreteFunction) -> None:
        self._fn = fn
        # A None dimension (the step count and keys of `train_steps`) takes any length.
        self._specs = [
            (spec.name, spec.dtype.as_numpy_dtype, tuple(spec.shape))
            for spec in fn.structured_input_signature[0]
        ]
        # The concrete function's public call binds the arguments to its structured signature
        # on every call: about a third of a 1 ms inference call (tensorflow 2.21). The inputs
        # are flat tensors of a fixed signature already, so the flat call is taken when this
        # TensorFlow has it; `tests/unit/model` checks both give the same outputs.
        self._call_flat = getattr(fn, "_call_flat", None)

    def zeros(self) -> list[np.ndarray]:
        """Return one array of zeros per input of the signature (all timesteps masked); an open
        dimension has length 1."""
        return [np.zeros([n or 1 for n in shape], dtype) for _, dtype, shape in self._specs]

    def __call__(self, *arrays: np.ndarray) -> tuple[tf.Tensor, ...]:
        """Run the step on `arrays` converted to the signature's dtypes.

        Raises:
            ValueError: an array's shape differs from the signature's; a concrete function would
                fail deep inside the graph instead.
        """
        tensors = []
        for array, (name, dtype, shape) in zip(arrays, self._specs, strict=True):
            value = np.asarray(array, dtype)
            if len(value.shape) != len(shape) or any(
                n is not None and n != m for n, m in zip(shape, value.shape, strict=True)
            ):
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
            tensors.append(tf.constant(value))
        if self._call_flat is None:
            return self._fn(*tensors)
        return tuple(self._call_flat(tensors, self._fn.captured_inputs))


class StatefulLSTM:
    """Drive a Keras LSTM stack with explicit states through one compiled train and infer step each.

    Attributes:
        keras_model: the functional model shared by both steps and used for export.
        optimizer: Adam, built before the first step so the train step traces once.
        train_traces: how many times the train step was traced (should stay 1).
        infer_traces: how many times the inference step was traced (should stay 1).
        fused_traces: how many times the train-and-infer step was traced (should stay 1).
        steps_traces: how many times the several-steps call was traced (should stay 1).
    """

    def __init__(self, settings: ModelSettings, n_inputs: int | None = None) -> None:
        """Build the model, the optimizer and both compiled steps.

        Args:
            settings: the model section of the settings.
            n_inputs: input features per timestep (the event's and the derived ones);
                `settings.n_features` when not given.
        """
        self.settings = settings
        self.n_inputs = n_inputs or settings.n_features
        if settings.deterministic:
            # Same inputs, same weights: the crash-recovery guarantee is checked bit for bit.
            tf.config.experimental.enable_op_determinism()
        self.train_traces = 0
        self.infer_traces = 0
        self.fused_traces = 0
        self.steps_traces = 0
        self.keras_model = build_keras_model(settings, self.n_inputs)
        self.optimizer = keras.optimizers.Adam(
            learning_rate=settings.learning_rate, clipnorm=settings.clipnorm
        )
        # Building now keeps variable creation out of the traced step.
        self.optimizer.build(self.keras_model.trainable_variables)
        t, b, r = settings.window, settings.batch_size, settings.infer_batch_size
        train_spec = self._spec(b, t, with_targets=True)
        # One more timestep than a train row: a key's full window of pending events and the
        # newest one fit in one inference row.
        infer_spec = self._spec(r, t + 1, prefix="forecast_")
        self._train = self._compile(self._train_body, train_spec)
        self._infer = self._compile(self._infer_body, infer_spec)
        self._train_and_infer = self._compile(self._train_and_infer_body, train_spec + infer_spec)
        self._steps = self._compile(
            self._steps_body,
            steps_signature(
                b,
                t,
                self.n_inputs,
                settings.n_targets * settings.horizon,
                settings.layers,
                settings.units,
            ),
        )

    def _spec(
        self, rows: int, steps: int, with_targets: bool = False, prefix: str = ""
    ) -> list[tf.TensorSpec]:
        """Return the input signature of a step over `rows` rows of `steps` timesteps."""
        s = self.settings
        spec = [tf.TensorSpec((rows, steps, self.n_inputs), tf.float32, name=f"{prefix}x")]
        if with_targets:
            outputs = s.n_targets * s.horizon
            spec.append(tf.TensorSpec((rows, steps, outputs), tf.float32, name=f"{prefix}y"))
        spec += [
            tf.TensorSpec((rows, steps), tf.bool, name=f"{prefix}mask"),
            tf.TensorSpec((s.layers, 2, rows, s.units), tf.float32, name=f"{prefix}states"),
        ]
        return spec

    def _compile(self, body, spec: list[tf.TensorSpec]) -> _CompiledStep:
        """Wrap `body` in a tf.function with a fixed signature and trace it now."""
        fn = tf.function(body, input_signature=spec, jit_compile=False, reduce_retracing=False)
        # Calling the concrete function skips tf.function's argument binding on the hot path.
        return _CompiledStep(fn.get_concrete_function())

    @property
    def state_shape(self) -> tuple[int, int, int, int]:
        """Return the host states' shape: (layers, 2, B, units)."""
        s = self.settings
        return (s.layers, 2, s.batch_size, s.units)

    @property
    def infer_shape(self) -> tuple[int, int]:
        """Return the inference step's (rows, timesteps)."""
        return self.settings.infer_batch_size, self.settings.window + 1

    def zero_states(self) -> np.ndarray:
        """Return float32 zeros of `state_shape`."""
        return np.zeros(self.state_shape, np.float32)

    def _forward(self, x, mask, states, training: bool):
        """Run the model from `states`; return predictions and the new states stacked."""
        flat = [states[i, j] for i in range(self.settings.layers) for j in (H, C)]
        preds, *final = self.keras_model([x, mask, *flat], training=training)
        new = tf.stack([tf.stack(final[i : i + 2]) for i in range(0, len(final), 2)])
        return preds, new

    def _train_body(self, x, y, mask, states):
        self.train_traces += 1  # Python side effect: runs only while tracing.
        return self._train_graph(x, y, mask, states)

    def _train_graph(self, x, y, mask, states):
        variables = self.keras_model.trainable_variables
        with tf.GradientTape() as tape:
            with _unrolled(self.keras_model, self.settings.window):
                preds, new = self._forward(x, mask, states, training=True)
            loss = masked_loss(self.settings.loss, y, preds, mask)
        grads = tape.gradient(loss, variables)
        # One fused reduction: the global norm is finite only if every gradient is.
        finite = tf.logical_and(
            tf.math.is_finite(loss), tf.math.is_finite(tf.linalg.global_norm(grads))
        )

        def update() -> tf.Tensor:
            self.optimizer.apply(grads, variables)
            return loss

        # A non-finite loss or gradient would poison the weights and Adam's moments for good:
        # skip the update and report the step as NaN so the caller can count it.
        loss = tf.cond(finite, update, lambda: tf.constant(float("nan"), loss.dtype))
        return loss, preds, new

    def _infer_body(self, x, mask, states):
        self.infer_traces += 1  # Python side effect: runs only while tracing.
        return self._infer_graph(x, mask, states)

    def _infer_graph(self, x, mask, states):
        with _unrolled(self.keras_model, self.settings.window + 1):
            return self._forward(x, mask, states, training=False)

    def _train_and_infer_body(self, x, y, mask, states, fx, fmask, fstates):
        self.fused_traces += 1  # Python side effect: runs only while tracing.
        # Program order is execution order here: tf.function's automatic control dependencies
        # run the forecast's reads of the weights before the train step's update writes them.
        forecast, forecast_states = self._infer_graph(fx, fmask, fstates)
        loss, preds, new = self._train_graph(x, y, mask, states)
        return loss, preds, new, forecast, forecast_states

    def _steps_body(self, *inputs):
        self.steps_traces += 1  # Python side effect: runs only while tracing.
        return run_steps(self, *inputs)

    def train_steps(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run S steps in one call, in order, each an inference then a train step.

        The arguments and results are `daemon.model.steps.run_steps`'s, as numpy arrays: each
        step's forecasts and train step give what `train_step_and_infer` (or `train_step`, where
        no forecast waits) would give called once per step, with the keys' states carried from
        step to step through the call's state tables.

        Raises:
            ValueError: an argument's shape differs from the settings'.
        """
        return tuple(out.numpy() for out in self._steps(*inputs))

    def train_step(self, x, y, mask, states) -> tuple[float, np.ndarray, np.ndarray]:
        """Run one test-then-train step from `states`.

        Args:
            x: inputs [B, T, F].
            y: targets [B, T, n_targets × H]; target i, step h at i × H + h − 1.
            mask: [B, T] bool, True on real timesteps (rows left-aligned).
            states: [layers, 2, B, units] states at the start of the batch; not modified.

        Returns:
            The loss, the predictions [B, T, n_targets × H] of the forward pass before the weight
            update, and the new states. When the loss or any gradient is not finite, the weights
            and the optimizer are left unchanged and the loss returned is NaN.

        Raises:
            ValueError: an argument's shape differs from the settings'.
        """
        loss, preds, new = self._train(x, y, mask, states)
        return float(loss), preds.numpy(), new.numpy()

    def train_step_and_infer(
        self, x, y, mask, states, fx, fmask, fstates
    ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Run `infer(fx, fmask, fstates)` and then `train_step(x, y, mask, states)` in one call.

        One dispatch instead of two: the forecasts waiting when a batch closes must be answered
        with the weights from before its step, and this answers them in the step's own call.

        Returns:
            `train_step`'s loss, predictions and states, then `infer`'s predictions and states,
            each exactly what the two calls made one after the other would return.

        Raises:
            ValueError: an argument's shape differs from the settings'.
        """
        loss, preds, new, forecast, forecast_states = self._train_and_infer(
            x, y, mask, states, fx, fmask, fstates
        )
        return float(loss), preds.numpy(), new.numpy(), forecast.numpy(), forecast_states.numpy()

    def infer(self, x, mask, states) -> tuple[np.ndarray, np.ndarray]:
        """Run a forward pass only; weights and the caller's states stay unchanged.

        Args:
            x: inputs [R, window + 1, F], R = `infer_batch_size`.
            mask: [R, window + 1] bool, True on real timesteps.
            states: [layers, 2, R, units] states at the start of the window.

        Returns:
            Predictions [R, window + 1, n_targets × H] and the new states.

        Raises:
            ValueError: an argument's shape differs from the settings'.
        """
        preds, new = self._infer(x, mask, states)
        return preds.numpy(), new.numpy()

    def warm_up(self) -> None:
        """Run each compiled step once on zeros, then put the weights and Adam's state back.

        A concrete function's first call optimises and instantiates its graph: 0.23 s for the
        fused step and 0.43 s for all three here, against ~2 ms for a later call. Called at
        start-up, that cost runs while the group join does instead of in front of the first
        predictions. Every variable is restored bit for bit, so the steps that follow are the
        ones an unwarmed model would take.
        """
        weights, optimizer = self.get_weights(), self.optimizer_state()
        try:
            for step in (self._steps, self._train_and_infer, self._train, self._infer):
                step(*step.zeros())
        finally:
            self.set_weights(weights)
            self.set_optimizer_state(optimizer)

    def get_weights(self) -> list[np.ndarray]:
        """Return copies of the model weights."""
        return self.keras_model.get_weights()

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Load weights shaped as `get_weights()` returns them."""
        self.keras_model.set_weights(weights)

    def save_weights(self, path: str | os.PathLike[str]) -> None:
        """Write the weights in the Keras weights format (the path must end `.weights.h5`)."""
        self.keras_model.save_weights(Path(path))

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Read weights written by `save_weights`."""
        self.keras_model.load_weights(Path(path))

    def _optimizer_variables(self) -> dict[str, tf.Variable]:
        # Paths start with the optimizer's name, which Keras uniquifies per process ("adam_3/"):
        # key by the rest, which names the model variable. The learning rate is configuration.
        return {
            v.path.split("/", 1)[-1]: v
            for v in self.optimizer.variables
            if not v.path.endswith("learning_rate")
        }

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Return Adam's step counter and moments by variable name (not the learning rate)."""
        return {name: np.asarray(v.numpy()) for name, v in self._optimizer_variables().items()}

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Load what `optimizer_state` returned; the learning rate stays the configured one.

        Raises:
            ValueError: the saved variables do not match this optimizer's.
        """
        variables = self._optimizer_variables()
        if set(state) != set(variables):
            raise ValueError(f"optimizer state names differ: {sorted(set(state) ^ set(variables))}")
        for path, value in state.items():
            if tuple(variables[path].shape) != value.shape:
                raise ValueError(f"optimizer variable {path} has shape {value.shape}")
            variables[path].assign(value)

    def export(self, path: str | os.PathLike[str]) -> None:
        """Save the functional model in the `.keras` format; it loads without custom objects.

        Args:
            path: the file to write; must end in `.keras`.
        """
        self.keras_model.save(Path(path))


def build_model(settings: Settings) -> StatefulLSTM:
    """Build the daemon's model: inputs are the event's features and the derived ones."""
    return StatefulLSTM(settings.model, n_inputs=len(input_names(settings)))
