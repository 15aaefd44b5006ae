"""The producer's partitioner: kafka-python's keyed choice, remembered per key.

kafka-python's `DefaultPartitioner` rebuilds the topic's sorted partition list and its set of
available partitions, then runs a pure-Python murmur2 over the key, for every record: about a
sixth of lstmd's publishing time on Birthdays. Every prediction of a key goes to the same
partition, so the choice is remembered per key until the topic's partition count changes. The
choice itself is kafka-python's (and the Java client's), so consumers see the same placement.
"""

from __future__ import annotations

from typing import Any

from kafka.partitioner import DefaultPartitioner, Partitioner, murmur2

# Keys remembered per topic. Past this the memory is cleared and filled again: 65,536 short keys
# hold ~6 MB, and a stream with more active keys than this pays murmur2 again on a miss only.
KEY_CACHE_MAX = 65_536


class KeyHashPartitioner(Partitioner):
    """kafka-python's default partitioning, with each key's partition remembered.

    A record with a key goes to murmur2(key) modulo the topic's partition count, over the
    partitions sorted (as `DefaultPartitioner`). A record without a key is left to
    `DefaultPartitioner` (a random available partition).
    """

    def __init__(self) -> None:
        super().__init__()
        self._unkeyed = DefaultPartitioner()
        # topic -> (partitions in sorted order, key -> partition)
        self._topics: dict[str, tuple[list[int], dict[bytes, int]]] = {}

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        """Return the partition for a record; see the class docstring."""
        if serialized_key is None:
            return self._unkeyed.partition(
                topic, key, serialized_key, value, serialized_value, cluster
            )
        chosen = self.keyed(topic, serialized_key, cluster)
        if chosen is None:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        return chosen

    def keyed(self, topic: str, serialized_key: bytes, cluster: Any) -> int | None:
        """Return a keyed record's partition, or None when the topic's metadata is unknown."""
        partitions = cluster.partitions_for_topic(topic)
        if partitions is None:
            return None
        known = self._topics.get(topic)
        if known is None or len(known[0]) != len(partitions) or len(known[1]) >= KEY_CACHE_MAX:
            known = (sorted(partitions), {})
            self._topics[topic] = known
        ordered, by_key = known
        chosen = by_key.get(serialized_key)
        if chosen is None:
            chosen = ordered[(murmur2(serialized_key) & 0x7FFFFFFF) % len(ordered)]
            by_key[serialized_key] = chosen
        return chosen
