"""The lstmd run: every event gets its published forecast, scored like any other model."""

import json

import numpy as np
import pytest
from toy_model import ToyModel

from daemon.core.derived import input_names
from daemon.evaluation.lstmd_run import first_target_steps, lstmd_forecasts
from daemon.evaluation.scoring import error_summary, pair_errors, scored_pairs
from daemon.settings import ModelSettings, Settings, StreamSettings


def _messages(keys, values):
    return [
        (key.encode(), json.dumps({"key": key, "ts": float(i), "features": [v, 1.0]}).encode())
        for i, (key, v) in enumerate(zip(keys, values, strict=True))
    ]


def test_lstmd_path_forecasts_every_event_and_agrees_with_the_learners_own_score():
    keys = [k for _ in range(30) for k in ("a", "b", "c")]
    values = [50.0 + 10 * np.sin(i / 3) for i in range(len(keys))]
    settings = Settings(
        model=ModelSettings(n_features=2, batch_size=2, window=4),
        stream=StreamSettings(max_batch_wait_ms=0),
    )
    run = lstmd_forecasts(
        settings,
        _messages(keys, values),
        poll_events=7,
        model_factory=lambda s: ToyModel.for_settings(s),
    )
    assert run.forecasts.shape == (len(keys), 1)
    assert np.isfinite(run.forecasts).all()  # one published forecast per event, the last too
    assert run.rejected == 0 and run.facts["train_steps"] > 0
    errors = pair_errors(run.forecasts, np.array(values), scored_pairs(keys))
    if "learner_mae" in run.facts:  # the learner's own prequential score, while it has one
        assert error_summary(errors).mae == pytest.approx(run.facts["learner_mae"])


def test_first_target_steps_reads_one_or_h_values_per_target():
    assert first_target_steps(np.array([3.0, 4.0]), n_targets=2, horizon=1).tolist() == [3.0]
    two_targets_three_steps = np.array([[1.0, 2.0, 3.0], [7.0, 8.0, 9.0]])
    assert first_target_steps(two_targets_three_steps, 2, 3).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="neither"):
        first_target_steps(np.zeros((3, 2)), 2, 3)


def test_with_a_horizon_every_event_gets_h_forecasts_scored_per_step_like_the_learner():
    keys = [k for _ in range(30) for k in ("a", "b", "c")]
    values = np.array([50.0 + 10 * np.sin(i / 3) for i in range(len(keys))])
    settings = Settings(
        model=ModelSettings(n_features=2, batch_size=2, window=4, horizon=3),
        stream=StreamSettings(max_batch_wait_ms=0),
    )
    run = lstmd_forecasts(
        settings,
        _messages(keys, values),
        poll_events=7,
        # One toy output per step ahead: the model's n_targets x H.
        model_factory=lambda s: ToyModel(2, len(input_names(s)), n_targets=3),
    )
    assert run.forecasts.shape == (len(keys), 3) and np.isfinite(run.forecasts).all()
    # The learner scores the events with all three successors; so does this, per step.
    full = scored_pairs(keys, 3).source
    expected = []
    for h in (1, 2, 3):
        later = {int(s): int(t) for s, t in zip(*_pairs(keys, h), strict=True)}
        truth = values[[later[int(t)] for t in full]]
        expected.append(float(np.mean(np.abs(run.forecasts[full, h - 1] - truth))))
    assert run.facts["learner_mae_per_step"] == pytest.approx(expected)


def _pairs(keys, h):
    pairs = scored_pairs(keys, h)
    return pairs.source, pairs.target
