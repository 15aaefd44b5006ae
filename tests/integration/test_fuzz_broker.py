"""10^5 good and hostile messages through a real broker into a running `lstmd run` (issue 11):
every input offset is answered exactly once, by a prediction or a dead letter, and the process
is alive at the end (then stops cleanly on SIGTERM)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaConsumer, TopicPartition

from daemon.edges.kafka_io import client_options, ensure_topics, produce_values
from daemon.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MESSAGES = 100_000
PARTITIONS = 4
KEYS = [f"s{i}" for i in range(40)]
BIG = "1" + "0" * 400
SEED = 11


def _good(rng: random.Random, clock: dict[str, int]) -> tuple[bytes, bytes]:
    key = rng.choice(KEYS)
    clock[key] += 60
    value = {"key": key, "ts": clock[key], "features": [rng.uniform(-5, 5), rng.uniform(0, 1)]}
    return key.encode(), json.dumps(value).encode()


def _hostile(rng: random.Random, clock: dict[str, int]) -> tuple[bytes, bytes]:
    key, value = _good(rng, clock)
    text = value.decode()
    kind = rng.randrange(10)
    damaged = [
        lambda: text.replace('"ts": ', f'"ts": {BIG}, "x": ', 1),
        lambda: text.replace('"features": [', f'"features": [{BIG}, ', 1),
        lambda: text.replace(f'"key": "{key.decode()}"', '"key": "\\ud800"'),
        lambda: "[" * 3000 + "]" * 3000,
        lambda: text.encode("utf-16").decode("latin-1"),
        lambda: "\ufeff" + text,
        lambda: (
            text.replace('"key": ', '"key": "' + "k" * 400 + '", "key": ', 1)[:0]
            + json.dumps({"key": "k" * 400, "ts": 1, "features": [1, 2]})
        ),
        lambda: text.replace('"features": [', '"features": ["nan", ', 1),
        lambda: json.dumps(rng.choice([None, True, 3, "x", [], {}])),
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))).decode("latin-1"),
    ][kind]()
    encoding = "latin-1" if kind in (4, 9) else "utf-8"
    return key, damaged.encode(encoding, errors="surrogatepass")


def _answers(options: dict, topics: list[str], expected: int, timeout_s: float) -> tuple:
    """Read predictions and dead letters until `expected` answers came or time ran out."""
    consumer = KafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
    consumer.assign(parts)
    consumer.seek_to_beginning()
    answered: Counter[tuple[int, int]] = Counter()
    reasons: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    try:
        while sum(answered.values()) < expected and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=20_000).items():
                for record in records:
                    if tp.topic == topics[0]:
                        body = json.loads(record.value)
                        answered[(body["source_partition"], body["source_offset"])] += 1
                    else:
                        headers = dict(record.headers)
                        source = (
                            int(headers["lstmd-source-partition"]),
                            int(headers["lstmd-source-offset"]),
                        )
                        answered[source] += 1
                        reasons[headers["lstmd-reason"].decode()] += 1
        time.sleep(2)  # anything beyond `expected` (a duplicate) would arrive now
        for tp_records in consumer.poll(timeout_ms=1000).values():
            for _ in tp_records:
                answered[(-1, -1)] += 1
    finally:
        consumer.close()
    return answered, reasons


def test_a_hundred_thousand_mixed_messages_are_each_answered_once(broker, tmp_path):
    tag = uuid.uuid4().hex[:10]
    topics = {"in": f"in-{tag}", "pred": f"pred-{tag}", "dlq": f"dlq-{tag}"}
    options = client_options(KafkaSettings(), broker.bootstrap)
    ensure_topics(options, [topics["in"]], partitions=PARTITIONS)
    ensure_topics(options, [topics["pred"], topics["dlq"]])
    rng, clock = random.Random(SEED), dict.fromkeys(KEYS, 0)
    items = [
        _hostile(rng, clock) if rng.random() < 0.4 else _good(rng, clock) for _ in range(MESSAGES)
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTMD_")}
    env.update(
        LSTMD_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
        LSTMD_KAFKA__INPUT_TOPIC=topics["in"],
        LSTMD_KAFKA__PREDICTIONS_TOPIC=topics["pred"],
        LSTMD_KAFKA__DEAD_LETTER_TOPIC=topics["dlq"],
        LSTMD_KAFKA__METRICS_TOPIC=f"met-{tag}",
        LSTMD_KAFKA__GROUP_ID=f"g-{tag}",
        LSTMD_MODEL__N_FEATURES="2",
        LSTMD_MODEL__UNITS="8",
        LSTMD_SNAPSHOT__DIRECTORY=str(tmp_path / "snapshots"),
        LSTMD_METRICS__PORT="0",
        LSTMD_LOG__LEVEL="WARNING",
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        produce_values(options, topics["in"], items)
        answered, reasons = _answers(options, [topics["pred"], topics["dlq"]], MESSAGES, 200)
        assert daemon.poll() is None, "lstmd run exited on fuzzed input"
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, stderr[-2000:]
    assert (-1, -1) not in answered, "answers arrived beyond one per message"
    assert len(answered) == MESSAGES and set(answered.values()) == {1}, "not exactly once"
    per_partition = Counter(p for p, _ in answered)
    assert len(per_partition) == PARTITIONS
    assert "internal_error" not in reasons
    print(f"\nfuzz at the broker: {MESSAGES} messages, dead letters by reason {dict(reasons)}")
