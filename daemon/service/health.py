"""Liveness and readiness of the daemon, decided from what the loop reports (pure, no sockets).

The runner calls `beat()` once per loop turn and the setters when partitions, restored state or
the broker connection change; the HTTP thread asks `liveness()` and `readiness()`. Every field is
a float or bool written whole, so the two threads need no lock.
"""

from __future__ import annotations


class Health:
    """Decide `/healthz` from loop progress and `/readyz` from assignment, restore and broker."""

    def __init__(self, stall_s: float, now: float) -> None:
        if stall_s <= 0:
            raise ValueError(f"stall_s must be positive, got {stall_s}")
        self.stall_s = stall_s
        # Start-up counts as a good turn: joining the group and restoring take a while.
        self._last_beat = now
        self._last_good = now
        self._assigned = False
        self._restored = False
        # Assumed until the runner reports an outage; readiness needs it.
        self._connected = True

    def beat(self, now: float, made_progress: bool, idle: bool) -> bool:
        """Record one loop turn; return whether it counts as alive (progress, idle or outage).

        Args:
            now: the runner's clock (monotonic seconds).
            made_progress: the turn consumed, trained or published something.
            idle: the poll returned nothing and nothing is waiting to be processed.
        """
        self._last_beat = now
        # A turning loop during a broker outage is alive: a restart would not bring the broker
        # back, so it is readiness that fails then, not liveness.
        good = made_progress or idle or not self._connected
        if good:
            self._last_good = now
        return good

    def set_assigned(self, assigned: bool) -> None:
        """Record whether the consumer holds any input partition."""
        self._assigned = assigned

    def set_restored(self, restored: bool) -> None:
        """Record whether start-up state (snapshot or fresh) is in place."""
        self._restored = restored

    def set_connected(self, connected: bool) -> None:
        """Record whether the broker is reachable."""
        self._connected = connected

    def liveness(self, now: float) -> tuple[bool, str]:
        """Return (ok, reason): ok while the loop made progress or idled within `stall_s`."""
        since_good = now - self._last_good
        if since_good <= self.stall_s:
            return True, ""
        if now - self._last_beat > self.stall_s:
            # A train step or a call that never returns: the loop itself is stuck.
            return False, f"no progress for {since_good:.0f} s: loop blocked"
        return False, f"no progress for {since_good:.0f} s: loop turning, work pending"

    def readiness(self) -> tuple[bool, str]:
        """Return (ok, reason): ok once state is restored, the broker up and partitions held."""
        if not self._restored:
            return False, "state not restored yet"
        if not self._connected:
            return False, "broker not connected"
        if not self._assigned:
            return False, "no partitions assigned"
        return True, ""
