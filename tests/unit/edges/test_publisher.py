"""A record for a topic the cluster does not know is dropped as undeliverable, and for a while
without asking again: send() would otherwise block the loop for every record."""

from kafka.errors import KafkaTimeoutError

from daemon.edges.kafka_io import UNKNOWN_TOPIC_RECHECK_S, Publisher
from daemon.settings import KafkaSettings


class _Metadata:
    def __init__(self, known):
        self.known = known

    def partitions_for_topic(self, topic):
        return {0} if topic in self.known else None


class _Producer:
    """Stands in for KafkaProducer: send() times out waiting for metadata of unknown topics."""

    def __init__(self, known):
        self._metadata = _Metadata(known)
        self.sends = 0

    def send(self, topic, key, value, headers):
        self.sends += 1
        raise KafkaTimeoutError("Failed to update metadata after 10.0 secs.")

    def flush(self, timeout):
        pass


def _publisher(known=(), clock=lambda: 0.0):
    class _Stubbed(Publisher):
        def _new_producer(self):
            return _Producer(set(known))

    return _Stubbed({}, KafkaSettings(), clock=clock)


def test_a_deleted_topic_drops_its_records_and_is_asked_again_only_after_a_while():
    now = [0.0]
    publisher = _publisher(clock=lambda: now[0])
    for _ in range(3):
        publisher.send("gone", b"k", b"v")
    assert publisher.undeliverable[("gone", "unknown_topic")] == 3
    assert publisher._producer.sends == 1  # one blocking metadata wait, not three
    assert publisher.flush(1.0) == 0 and publisher.failed == 0  # nothing left to retry
    now[0] = UNKNOWN_TOPIC_RECHECK_S + 1
    publisher.send("gone", b"k", b"v")
    assert publisher._producer.sends == 2


def test_a_metadata_timeout_for_a_known_topic_is_retried():
    publisher = _publisher(known={"slow"})
    publisher.send("slow", b"k", b"v")
    assert publisher.failed == 1 and not publisher.undeliverable
