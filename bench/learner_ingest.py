"""The learner alone: CPU per event of decode + ingest + end_of_poll, with the real model.

Run: PYTHONPATH=. .venv/bin/python bench/learner_ingest.py [--events 60000] [--poll 500]

Birthdays' first N events through `daemon.evaluation.lstmd_run.lstmd_forecasts` (the runner's
learning path without Kafka: decode, `OnlineLearner.ingest`, `end_of_poll` every `--poll`
events, `drain`), the shipped model (B 32, T 4, 16 units, derived features, forecast mode).
Prints CPU time per event (all threads, `time.process_time`; steadier than wall time on a
shared machine), the share spent inside the model's calls, and a SHA-256 prefix of every
forecast: two versions of the code that must be bit-identical print the same digest.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from typing import Any

import numpy as np

WARM_UP_EVENTS = 2000  # compiles the model's steps before the measured pass


class TimedModel:
    """The model, with the CPU time spent inside its calls counted."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cpu_s = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def _timed(self, call: Any, *args: Any) -> Any:
        started = time.process_time()
        try:
            return call(*args)
        finally:
            self.cpu_s += time.process_time() - started

    def train_step(self, *args: Any) -> Any:
        return self._timed(self.model.train_step, *args)

    def train_step_and_infer(self, *args: Any) -> Any:
        return self._timed(self.model.train_step_and_infer, *args)

    def infer(self, *args: Any) -> Any:
        return self._timed(self.model.infer, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60000)
    parser.add_argument("--poll", type=int, default=500, help="events per simulated poll")
    args = parser.parse_args()

    from daemon.model.environment import configure_tensorflow

    configure_tensorflow()
    from daemon.evaluation.datasets import load_birthdays_eval
    from daemon.evaluation.lstmd_run import eval_settings, lstmd_forecasts
    from daemon.model.lstm import build_model
    from daemon.settings import Settings

    data = load_birthdays_eval(limit=args.events)
    settings = eval_settings(Settings(), data.n_raw(), data.target_index)
    messages = data.raw_messages()
    lstmd_forecasts(settings, messages[:WARM_UP_EVENTS], args.poll, build_model)

    models: list[TimedModel] = []
    build_cpu = [0.0]

    def factory(s: Settings) -> TimedModel:
        started = time.process_time()
        models.append(TimedModel(build_model(s)))
        build_cpu[0] += time.process_time() - started
        return models[-1]

    started = time.process_time()
    run = lstmd_forecasts(settings, messages, args.poll, factory)
    cpu = time.process_time() - started - build_cpu[0]
    n = len(messages)
    model_cpu = sum(m.cpu_s for m in models)
    digest = hashlib.sha256(np.ascontiguousarray(run.forecasts).tobytes()).hexdigest()[:16]
    print(
        f"{n} events, poll {args.poll}: CPU {1e6 * cpu / n:.1f} us/event; inside the model "
        f"{1e6 * model_cpu / n:.1f} us; outside it {1e6 * (cpu - model_cpu) / n:.1f} us"
    )
    facts = run.facts
    print(
        f"steps {facts['train_steps']}, inference calls {facts['inference_calls']} "
        f"(+{facts['inference_batches_in_steps']} inside steps), "
        f"learner MAE {facts['learner_mae']!r}, forecasts sha256 {digest}"
    )


if __name__ == "__main__":
    main()
