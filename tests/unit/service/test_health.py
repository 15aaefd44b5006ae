"""Health: liveness from loop progress and readiness from restore, broker and assignment."""

import pytest

from daemon.service.health import Health

STALL = 60.0


@pytest.fixture
def health():
    return Health(stall_s=STALL, now=1000.0)


def test_a_fresh_daemon_is_live_during_start_up_but_stalls_without_turns(health):
    assert health.liveness(1000.0 + STALL) == (True, "")
    ok, reason = health.liveness(1000.0 + STALL + 15)
    assert not ok
    assert reason == "no progress for 75 s: loop blocked"


def test_progress_keeps_the_loop_live(health):
    for t in range(1000, 1300, 10):
        assert health.beat(float(t), made_progress=True, idle=False)
        assert health.liveness(t + 1.0)[0]
    assert health.liveness(1290.0 + STALL)[0]
    assert not health.liveness(1290.0 + STALL + 0.5)[0]


def test_an_idle_loop_with_nothing_to_consume_stays_live(health):
    health.beat(1000.0, made_progress=True, idle=False)
    for t in range(1005, 1500, 5):
        assert health.beat(float(t), made_progress=False, idle=True)
    assert health.liveness(1500.0) == (True, "")


def test_a_turning_loop_that_makes_no_progress_with_work_pending_stalls(health):
    health.beat(1000.0, made_progress=True, idle=False)
    for t in range(1001, 1076):
        assert not health.beat(float(t), made_progress=False, idle=False)
    assert health.liveness(1075.0) == (False, "no progress for 75 s: loop turning, work pending")
    health.beat(1076.0, made_progress=True, idle=False)
    assert health.liveness(1076.0) == (True, "")


def test_a_blocked_train_step_stops_the_beats_and_the_loop_stalls_even_after_idling(health):
    health.beat(1000.0, made_progress=False, idle=True)
    # The next turn trains a batch that never returns: no more beats.
    assert health.liveness(1000.0 + STALL)[0]
    ok, reason = health.liveness(1075.0)
    assert (ok, reason) == (False, "no progress for 75 s: loop blocked")


def test_a_turning_loop_during_a_broker_outage_is_live_but_not_ready(health):
    health.set_restored(True)
    health.set_assigned(True)
    health.set_connected(False)
    for t in range(1000, 1300, 5):
        assert health.beat(float(t), made_progress=False, idle=False)
    assert health.liveness(1300.0)[0]
    assert health.readiness() == (False, "broker not connected")
    health.set_connected(True)
    assert health.readiness() == (True, "")


def test_ready_needs_restored_state_and_assigned_partitions(health):
    assert health.readiness() == (False, "state not restored yet")
    health.set_assigned(True)
    assert health.readiness() == (False, "state not restored yet")
    health.set_restored(True)
    assert health.readiness() == (True, "")
    health.set_assigned(False)  # a rebalance took every partition away
    assert health.readiness() == (False, "no partitions assigned")


def test_stall_must_be_positive():
    with pytest.raises(ValueError, match="stall_s"):
        Health(stall_s=0, now=0.0)
