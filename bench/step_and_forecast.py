"""A train step with the forecasts waiting before it: two calls against the one fused call.

Run: .venv/bin/python bench/step_and_forecast.py [--rounds 6] [--calls 300]

When a batch closes, the forecasts still waiting must be answered with the weights from before
its step. `StatefulLSTM` can do that as `infer` and then `train_step` (two TensorFlow calls) or
as `train_step_and_infer` (one call running both graphs); the learner takes the fused call when
the waiting forecasts fit one inference batch. This times both on the default model's shapes
(B 32, T 4, 16 units, 20 inputs as Birthdays with derived features, 128 inference rows of T + 1,
20 of them holding 2 events as a Birthdays poll does), alternating in rounds in one process:
the machine is shared, so the per-round ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=300, help="steps per round and method")
    args = parser.parse_args()

    from daemon.model.environment import configure_tensorflow

    configure_tensorflow()
    from daemon.model.lstm import StatefulLSTM
    from daemon.settings import ModelSettings

    b, t, f, rows, units = 32, 4, 20, 128, 16
    settings = ModelSettings(
        n_features=11, target_index=(0,), units=units, batch_size=b, window=t, infer_batch_size=rows
    )
    model = StatefulLSTM(settings, n_inputs=f)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, t, f)).astype(np.float32)
    y = rng.normal(size=(b, t, 1)).astype(np.float32)
    mask, states = np.ones((b, t), bool), model.zero_states()
    fx = rng.normal(size=(rows, t + 1, f)).astype(np.float32)
    fmask = np.zeros((rows, t + 1), bool)
    fmask[:20, :2] = True
    fstates = np.zeros((1, 2, rows, units), np.float32)

    def two_calls() -> None:
        model.infer(fx, fmask, fstates)
        model.train_step(x, y, mask, states)

    def fused() -> None:
        model.train_step_and_infer(x, y, mask, states, fx, fmask, fstates)

    methods = {"two calls": two_calls, "fused": fused}
    for method in methods.values():  # warm up both graphs
        for _ in range(30):
            method()
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, method in methods.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(args.calls):
                method()
            wall[name].append(1e3 * (time.perf_counter() - started) / args.calls)
            cpu[name].append(1e3 * (time.process_time() - cpu_started) / args.calls)
    for name in methods:
        print(
            f"{name:9s} ms per step: wall {', '.join(f'{v:.2f}' for v in wall[name])}; "
            f"CPU {', '.join(f'{v:.2f}' for v in cpu[name])}"
        )
    ratios = [a / b for a, b in zip(wall["fused"], wall["two calls"], strict=True)]
    cpu_ratios = [a / b for a, b in zip(cpu["fused"], cpu["two calls"], strict=True)]
    print(
        f"fused / two calls per round: wall median {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}), CPU median "
        f"{statistics.median(cpu_ratios):.2f} (range {min(cpu_ratios):.2f}-{max(cpu_ratios):.2f})"
    )


if __name__ == "__main__":
    main()
