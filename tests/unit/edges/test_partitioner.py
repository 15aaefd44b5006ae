"""The producer's partitioner places keyed records exactly where kafka-python's default would, also
after the topic grows, and leaves unkeyed records to the default's random choice."""

import random

import pytest
from kafka.partitioner import DefaultPartitioner

from daemon.edges import partitioner as partitioner_module
from daemon.edges.partitioner import KeyHashPartitioner


class _Cluster:
    """The two calls a partitioner makes on kafka-python's ClusterMetadata."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    def topics(self):
        return set(self.partitions)

    def partitions_for_topic(self, topic):
        if topic not in self.partitions:
            return None
        return set(range(self.partitions[topic]))

    def available_partitions_for_topic(self, topic):
        return self.partitions_for_topic(topic)


def _keys(n: int) -> list[bytes]:
    rng = random.Random(7)
    return [f"key-{rng.getrandbits(40)}-{'ü' * (i % 5)}".encode() for i in range(n)] + [b""]


def test_keyed_records_go_where_the_default_partitioner_sends_them():
    cluster = _Cluster({"predictions": 6, "dead": 1})
    ours, default = KeyHashPartitioner(), DefaultPartitioner()
    for topic in ("predictions", "dead"):
        for key in _keys(500) * 2:  # the second round is answered from memory
            expected = default.partition(topic, key, key, b"v", b"v", cluster)
            assert ours.partition(topic, key, key, b"v", b"v", cluster) == expected
    # Several partitions are really used, so the comparison above is not trivially 0 == 0.
    used = {ours.partition("predictions", k, k, None, None, cluster) for k in _keys(500)}
    assert used == set(range(6))


def test_a_topic_that_grows_places_keys_over_its_new_partition_count():
    cluster = _Cluster({"predictions": 2})
    ours, default = KeyHashPartitioner(), DefaultPartitioner()
    keys = _keys(300)
    before = [ours.partition("predictions", k, k, None, None, cluster) for k in keys]
    cluster.partitions["predictions"] = 7
    after = [ours.partition("predictions", k, k, None, None, cluster) for k in keys]
    assert after == [default.partition("predictions", k, k, None, None, cluster) for k in keys]
    assert before != after and max(after) >= 2


def test_memory_is_bounded_and_refills_with_the_same_answers(monkeypatch):
    monkeypatch.setattr(partitioner_module, "KEY_CACHE_MAX", 16)
    cluster = _Cluster({"predictions": 5})
    ours, default = KeyHashPartitioner(), DefaultPartitioner()
    for key in _keys(200):
        got = ours.partition("predictions", key, key, None, None, cluster)
        assert got == default.partition("predictions", key, key, None, None, cluster)
        assert len(ours._topics["predictions"][1]) <= 16


def test_unkeyed_records_and_unknown_topics_behave_as_the_default():
    cluster = _Cluster({"metrics": 3})
    ours = KeyHashPartitioner()
    assert {ours.partition("metrics", None, None, b"v", b"v", cluster) for _ in range(200)} == {
        0,
        1,
        2,
    }
    with pytest.raises(ValueError, match="not found"):
        ours.partition("nowhere", b"k", b"k", None, None, cluster)
