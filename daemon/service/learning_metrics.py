"""Mirror the learner's counters and gauges into Prometheus once per poll.

The learner counts in plain integers (it is pure); Prometheus counters only go up, also when a
rollback restores older learner counters, so each counter is advanced by what is new since the
last look.
"""

from __future__ import annotations

from collections import Counter

from daemon.core.learner import OnlineLearner
from daemon.service.metrics import DaemonMetrics


class LearningRecorder:
    """Carry what the learner counted since the last call into the metrics."""

    def __init__(self, metrics: DaemonMetrics, learner: OnlineLearner) -> None:
        self._metrics = metrics
        self._learner = learner
        self.resync()

    def resync(self) -> None:
        """Take the learner's counters as seen (after a restore or a rollback)."""
        learner = self._learner
        self._steps = learner.step
        self._resets = Counter(learner.resets)
        self._nonfinite = learner.nonfinite_losses
        self._infer_calls = learner.infer_calls

    def record(self) -> None:
        """Advance counters by what is new, observe step figures, set the gauges."""
        learner, metrics = self._learner, self._metrics
        for seconds in learner.step_seconds:
            metrics.step_duration.observe(seconds)
        for rows in learner.step_rows:
            metrics.batch_rows.observe(rows)
        learner.step_seconds.clear()
        learner.step_rows.clear()
        if learner.step > self._steps:
            metrics.train_steps.inc(learner.step - self._steps)
            self._steps = learner.step
            metrics.loss.set(learner.last_loss)
        for reason, count in learner.resets.items():
            if count > self._resets[reason]:
                metrics.resets.labels(reason=reason).inc(count - self._resets[reason])
                self._resets[reason] = count
        metrics.nonfinite_losses.inc(max(0, learner.nonfinite_losses - self._nonfinite))
        self._nonfinite = learner.nonfinite_losses
        metrics.inference_calls.inc(max(0, learner.infer_calls - self._infer_calls))
        self._infer_calls = learner.infer_calls
        metrics.keys_in_store.set(learner.keys_in_store())
        metrics.pending_events.set(learner.pending_events())
        metrics.prequential_mae.labels(model="lstmd").set(learner.rolling.model_mae)
        metrics.prequential_mae.labels(model="naive").set(learner.rolling.naive_mae)
        scores = learner.interval_scores
        coverage, interval_score = scores.rolling_coverage(), scores.rolling_interval_score()
        for level in scores.levels:
            metrics.interval_coverage.labels(level=f"{level:g}").set(coverage[level])
            metrics.interval_score.labels(level=f"{level:g}").set(interval_score[level])
