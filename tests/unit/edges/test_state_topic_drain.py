"""Reading a partition state from the state topic: an empty topic is answered without waiting,
a topic with records is read to its end, past Tansu's end offsets that trail the last batch."""

from kafka.structs import TopicPartition

from daemon.edges.state_topic import READ_IDLE_S, _drain

TPS = [TopicPartition("state", 0), TopicPartition("state", 1)]


class _Consumer:
    """end_offsets and poll as kafka-python answers them; polls hand out `batches` in turn."""

    def __init__(self, ends, batches):
        self._ends = ends
        self._batches = list(batches)
        self.polls: list[int] = []
        self._positions = dict.fromkeys(TPS, 0)

    def end_offsets(self, tps):
        return {tp: self._ends.get(tp, 0) for tp in tps}

    def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        batch = self._batches.pop(0) if self._batches else {}
        for tp, records in batch.items():
            self._positions[tp] += len(records)
        return batch

    def position(self, tp):
        return self._positions[tp]


def test_an_empty_state_topic_is_answered_without_a_poll():
    consumer = _Consumer({}, [])
    assert list(_drain(consumer, TPS)) == []
    assert consumer.polls == []


def test_records_are_read_past_end_offsets_that_trail_the_last_batch():
    # Tansu reports the last batch's base offset + 1: partition 1 ends "at 1" but holds 2.
    consumer = _Consumer(
        {TPS[1]: 1},
        [{TPS[1]: ["a"]}, {}, {TPS[1]: ["b"]}],
    )
    assert list(_drain(consumer, TPS)) == ["a", "b"]
    assert consumer.polls[-1] == int(READ_IDLE_S * 1000)  # the end confirmed by an idle poll
