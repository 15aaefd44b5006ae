"""A record for a topic the cluster does not know is dropped as undeliverable, and for a while
without asking again: send() would otherwise block the loop for every record. Outcomes are
counted from the records' futures in bulk, all of them by the time flush returns."""

from kafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future

from daemon.edges.publisher import SETTLE_EVERY_RECORDS, UNKNOWN_TOPIC_RECHECK_S, Publisher
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


class _FutureProducer:
    """Stands in for KafkaProducer: send() returns a future that the test resolves."""

    def __init__(self):
        self._metadata = _Metadata(set())
        self.futures = []
        self.sent = []

    def send(self, topic, key, value, headers):
        future = Future()
        self.futures.append(future)
        self.sent.append(value)
        return future

    def flush(self, timeout):
        for future in self.futures:
            if not future.is_done:
                future.success(None)

    def close(self, timeout):
        pass


def _future_publisher():
    class _Stubbed(Publisher):
        def _new_producer(self):
            return _FutureProducer()

    return _Stubbed({}, KafkaSettings())


def test_outcomes_are_counted_from_the_futures_by_the_time_flush_returns():
    publisher = _future_publisher()
    for i in range(4):
        publisher.send("t", b"k", b"%d" % i)
    first = publisher._producer
    first.futures[1].failure(KafkaConnectionError("broker gone"))  # retriable: sent again
    first.futures[2].failure(MessageSizeTooLargeError())  # final: dropped, counted
    assert publisher.delivered == 0  # nothing settled yet: no per-record callback ran
    assert publisher.flush(1.0) == 1
    assert (publisher.delivered, publisher.failed) == (2, 1)
    assert publisher.undeliverable[("t", "too_large")] == 1
    assert publisher._producer.sent == [b"1"]  # a fresh producer got the retry
    assert publisher.flush(1.0) == 0 and publisher.delivered == 3


def test_records_in_flight_are_settled_in_bulk_once_enough_are_waiting():
    publisher = _future_publisher()
    for _ in range(SETTLE_EVERY_RECORDS - 1):
        publisher.send("t", b"k", b"v")
    for future in publisher._producer.futures[:-10]:
        future.success(None)
    assert publisher.delivered == 0
    publisher.send("t", b"k", b"v")  # the threshold: done ones are counted, 11 stay in flight
    assert publisher.delivered == SETTLE_EVERY_RECORDS - 11
    assert len(publisher._in_flight) == 11
    publisher._producer.futures[-1].success(None)
    publisher.close(1.0)  # the fake's close flushes nothing: only the one that succeeded counts
    assert publisher.delivered == SETTLE_EVERY_RECORDS - 10


class _Accumulator:
    def __init__(self):
        self.appended = []

    def append(self, tp, timestamp_ms, key, value, headers):
        self.appended.append((tp.topic, tp.partition, key, value))
        future = Future()
        future.success(None)
        return future, False, len(self.appended) == 1, False


class _Sender:
    def __init__(self):
        self.wakeups = 0

    def wakeup(self):
        self.wakeups += 1


class _DirectProducer(_Producer):
    """A producer with the internals the direct path drives; send() records what it got."""

    def __init__(self, known):
        super().__init__(known)
        self._accumulator = _Accumulator()
        self._sender = _Sender()
        self._transaction_manager = None
        self.sent = []

    def send(self, topic, key, value, headers):
        self.sent.append((topic, key, value, headers))
        future = Future()
        future.success(None)
        return future


def test_only_keyed_records_without_headers_to_known_topics_skip_send():
    class _Direct(Publisher):
        def _new_producer(self):
            return _DirectProducer({"predictions"})

    publisher = _Direct({}, KafkaSettings(max_request_size=4096, dead_letter_max_bytes=1024))
    producer = publisher._producer
    publisher.send("predictions", b"k1", b"v1")
    publisher.send("predictions", b"k2", b"v2")
    publisher.send("predictions", None, b"no key")
    publisher.send("predictions", b"k3", b"with headers", [("h", b"1")])
    publisher.send("elsewhere", b"k4", b"metadata not known yet")
    publisher.send("predictions", b"k5", b"x" * 3800)  # near the limit: send() checks the size
    assert [r[2] for r in producer._accumulator.appended] == [b"k1", b"k2"]
    assert producer._sender.wakeups == 1  # the first record opened a batch
    assert [r[2] for r in producer.sent] == [
        b"no key",
        b"with headers",
        b"metadata not known yet",
        b"x" * 3800,
    ]
    assert publisher.flush(1) == 0
    assert publisher.delivered == 6
