"""The predictions topic's JSON: exactly the fields of DESIGN §7, valid JSON for any value."""

import json

import numpy as np

from daemon.core.records import Prediction, encode_prediction


def _prediction(values: list[float], target: list[float] | None) -> Prediction:
    return Prediction(
        key="CA",
        ts=12.5,
        partition=3,
        offset=41,
        mode="forecast" if target is None else "supervised",
        prediction=np.array(values, dtype=np.float32),
        target=None if target is None else np.array(target, dtype=np.float32),
        step=7,
        received_at=0.0,
    )


def test_a_prediction_record_carries_its_source_and_step_and_nothing_else():
    record = json.loads(encode_prediction(_prediction([1.5], [2.0]), "events"))
    assert record == {
        "key": "CA",
        "ts": 12.5,
        "source_topic": "events",
        "source_partition": 3,
        "source_offset": 41,
        "mode": "supervised",
        "prediction": [1.5],
        "target": [2.0],
        "model_step": 7,
    }


def test_a_non_finite_prediction_is_published_as_null():
    record = json.loads(encode_prediction(_prediction([float("nan"), 1.0], None), "events"))
    assert record["prediction"] == [None, 1.0]
    assert record["target"] is None


def test_float64_and_other_vectors_are_written_alike_as_python_floats_would_be():
    values = [float("nan"), float("inf"), -float("inf"), 1e-300, 0.1 + 0.2, 812.4, -0.0]
    for array in (
        np.array(values, dtype=np.float64),  # handed to orjson as it is
        np.repeat(np.array(values, dtype=np.float64), 2)[::2],  # not contiguous: converted first
    ):
        record = encode_prediction(
            Prediction("CA", 12.5, 3, 41, "supervised", array, array, 7, 0.0), "e"
        )
        expected = [None, None, None, 1e-300, 0.30000000000000004, 812.4, -0.0]
        decoded = json.loads(record)
        assert decoded["prediction"] == expected == decoded["target"]
        assert b'"prediction":[null,null,null,1e-300,0.30000000000000004,812.4,-0.0]' in record
