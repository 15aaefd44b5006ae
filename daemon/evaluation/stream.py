"""The decoded events of a data set, as every model of the evaluation sees them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from daemon.core.events import Event, EventDecoder, Rejection


@dataclass(frozen=True)
class Stream:
    """Per event, in stream order: its key, time, target value and features."""

    keys: list[str]
    ts: np.ndarray
    values: np.ndarray
    features: list[np.ndarray]

    def times_by_key(self) -> dict[str, list[float]]:
        """Return each key's event times, in order."""
        out: dict[str, list[float]] = {}
        for key, ts in zip(self.keys, self.ts.tolist(), strict=True):
            out.setdefault(key, []).append(ts)
        return out


def decode_stream(
    messages: Sequence[tuple[bytes | None, bytes]], n_features: int, target: int
) -> Stream:
    """Decode every message with the daemon's decoder.

    Raises:
        ValueError: A message is not a valid event: evaluation data must be clean.
    """
    events: list[Event] = []
    decoder = EventDecoder(n_features, 1)
    for index, (key, value) in enumerate(messages):
        event = decoder.decode(value, key)
        if isinstance(event, Rejection):
            raise ValueError(
                f"event {index} is not valid ({event.reason.value}: {event.detail}); "
                "evaluation data must be clean: fix or drop that row"
            )
        events.append(event)
    return Stream(
        keys=[e.key for e in events],
        ts=np.array([e.ts for e in events], dtype=np.float64),
        values=np.array([e.features[target] for e in events], dtype=np.float64),
        features=[e.features for e in events],
    )
