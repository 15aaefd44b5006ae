"""Which producer errors are final: a record that can never be delivered is dropped and
counted, never retried at every flush (where it would hold back every later commit)."""

import pytest
from kafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidTopicError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordListTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from daemon.edges.kafka_io import undeliverable_reason


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (MessageSizeTooLargeError(), "too_large"),
        (RecordListTooLargeError(), "too_large"),
        (UnknownTopicOrPartitionError(), "unknown_topic"),
        (TopicAuthorizationFailedError(), "not_authorized"),
        (ClusterAuthorizationFailedError(), "not_authorized"),
        (InvalidTopicError(), "non_retriable"),
        (TypeError("value must be bytes"), "invalid_record"),
    ],
)
def test_errors_no_retry_can_cure_are_final(error, reason):
    assert undeliverable_reason(error) == reason


@pytest.mark.parametrize(
    "error", [KafkaTimeoutError(), RequestTimedOutError(), NotLeaderForPartitionError()]
)
def test_passing_broker_trouble_is_retried(error):
    assert undeliverable_reason(error) is None
