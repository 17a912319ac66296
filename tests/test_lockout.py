"""AuthGuard: lockout, back-off, half-open trial, serialised first attempt, with a fake clock."""

from __future__ import annotations

import pytest
from fakeclock import FakeClock
from hypothesis import given
from hypothesis import strategies as st

from pycntlm.lockout import AuthGuard


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(500.0)


def state(g: AuthGuard) -> str:
    """g.state as a plain str, so mypy does not narrow the Literal across calls."""
    return g.state


def guard(clock: FakeClock, threshold: int = 1, backoff: float = 300.0) -> AuthGuard:
    return AuthGuard(threshold=threshold, backoff=backoff, clock=clock)


def test_fresh_guard_serialises_until_proven(clock: FakeClock) -> None:
    g = guard(clock)
    assert state(g) == "ok" and g.wait_hint() == "ok" and g.allowed()
    assert g.begin_attempt()
    assert g.wait_hint() == "busy"
    assert not g.allowed()
    assert not g.begin_attempt()
    assert g.end_attempt(True) is False
    assert g.proven
    # Proven: attempts run in parallel.
    assert all(g.begin_attempt() for _ in range(10))
    assert g.in_flight == 10
    assert g.wait_hint() == "ok"


def test_aborted_attempt_releases_the_slot_without_proving(clock: FakeClock) -> None:
    g = guard(clock)
    assert g.begin_attempt()
    assert not g.begin_attempt()
    assert g.end_attempt(None) is False
    assert not g.proven
    assert g.rejections == 0
    assert g.begin_attempt()
    assert not g.begin_attempt()


def test_first_rejection_locks_for_backoff(clock: FakeClock) -> None:
    g = guard(clock)
    assert g.begin_attempt()
    assert g.end_attempt(False) is True
    assert state(g) == "locked"
    assert g.wait_hint() == "locked"
    assert g.remaining() == 300.0
    assert not g.begin_attempt()
    clock.advance(299.5)
    assert g.remaining() == 0.5
    assert not g.allowed()
    assert g.rejections_total == 1


def test_half_open_grants_one_trial_and_relocks_on_rejection(clock: FakeClock) -> None:
    g = guard(clock)
    g.begin_attempt()
    g.end_attempt(False)
    clock.advance(300)
    assert state(g) == "ok"
    assert g.remaining() == 0.0
    assert g.begin_attempt()
    assert not g.begin_attempt()
    assert g.wait_hint() == "busy"
    assert g.end_attempt(False) is True
    assert state(g) == "locked"
    assert g.remaining() == 300.0
    assert g.rejections_total == 2


def test_half_open_success_resets_everything(clock: FakeClock) -> None:
    g = guard(clock)
    g.begin_attempt()
    g.end_attempt(False)
    clock.advance(301)
    assert g.begin_attempt()
    g.end_attempt(True)
    assert state(g) == "ok" and g.proven and g.rejections == 0
    assert g.begin_attempt() and g.begin_attempt()


def test_half_open_abort_frees_the_trial_and_stays_armed(clock: FakeClock) -> None:
    g = guard(clock)
    g.begin_attempt()
    g.end_attempt(False)
    clock.advance(300)
    assert g.begin_attempt()
    g.end_attempt(None)
    assert g.begin_attempt()
    # Still one rejection away from a re-lock.
    assert g.end_attempt(False) is True


def test_threshold_counts_consecutive_rejections(clock: FakeClock) -> None:
    g = guard(clock, threshold=3)
    for _ in range(2):
        assert g.begin_attempt()
        assert g.end_attempt(False) is False
        assert state(g) == "ok"
    assert g.rejections == 2
    assert g.begin_attempt()
    assert g.end_attempt(True) is False
    assert g.rejections == 0
    for expected in (False, False, True):
        assert g.begin_attempt()
        assert g.end_attempt(False) is expected
    assert state(g) == "locked"
    # After the back-off, the first rejected trial re-locks (no fresh allowance of 3).
    clock.advance(300)
    assert g.begin_attempt()
    assert g.end_attempt(False) is True


def test_rejection_while_proven_makes_guard_unproven_and_locks(clock: FakeClock) -> None:
    g = guard(clock)
    g.begin_attempt()
    g.end_attempt(True)
    for _ in range(5):
        assert g.begin_attempt()
    # The password changed on the domain: the five in-flight handshakes are rejected.
    assert g.end_attempt(False) is True
    assert [g.end_attempt(False) for _ in range(4)] == [False] * 4
    assert g.rejections_total == 5
    assert state(g) == "locked"
    assert g.remaining() == 300.0  # late rejections do not extend the lock
    assert not g.proven


def test_late_success_while_locked_unlocks(clock: FakeClock) -> None:
    g = guard(clock)
    g.begin_attempt()
    g.end_attempt(True)
    g.begin_attempt()
    g.begin_attempt()
    g.end_attempt(False)
    assert state(g) == "locked"
    g.end_attempt(True)
    assert state(g) == "ok" and g.proven


def test_rearm_unlocks_and_unproves(clock: FakeClock) -> None:
    g = guard(clock)
    g.begin_attempt()
    g.end_attempt(False)
    assert state(g) == "locked"
    g.rearm()
    assert state(g) == "ok" and g.remaining() == 0.0 and g.rejections == 0
    assert not g.proven
    assert g.rejections_total == 1
    assert g.begin_attempt()
    assert not g.begin_attempt()


def test_record_methods_work_without_begin(clock: FakeClock) -> None:
    g = guard(clock)
    assert g.record_rejection() is True
    assert g.record_rejection() is False
    g.record_success()
    assert state(g) == "ok" and g.proven


def test_end_without_begin_is_a_bug(clock: FakeClock) -> None:
    with pytest.raises(RuntimeError, match="without a matching"):
        guard(clock).end_attempt(True)


def test_invalid_arguments(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="threshold"):
        guard(clock, threshold=0)
    with pytest.raises(ValueError, match="backoff"):
        guard(clock, backoff=-1)


def test_defaults() -> None:
    g = AuthGuard()
    assert state(g) == "ok"
    assert g.begin_attempt()
    assert g.end_attempt(False) is True
    assert 299.0 < g.remaining() <= 300.0


def test_stale_password_storm_produces_at_most_two_rejections(clock: FakeClock) -> None:
    """100 sequential and 20 interleaved connections over two back-off windows."""
    g = guard(clock)
    granted = 0
    for _ in range(100):
        clock.advance(2.0)  # 200 s: inside the first back-off window after the first rejection
        if g.begin_attempt():
            granted += 1
            g.end_attempt(False)  # the verifier rejects every attempt
    clock.advance(150.0)  # the back-off has elapsed: half-open
    pending = 0
    for _ in range(20):
        if g.begin_attempt():
            granted += 1
            pending += 1
    for _ in range(pending):
        g.end_attempt(False)
    for _ in range(20):
        assert not g.begin_attempt()
    assert granted == 2
    assert g.rejections_total == 2
    assert state(g) == "locked"


_events = st.lists(
    st.one_of(
        st.just(("begin", 0.0)),
        st.just(("end", 0.0)),
        st.tuples(st.just("tick"), st.floats(0.0, 400.0)),
    ),
    max_size=200,
)


@given(st.integers(1, 4), _events)
def test_rejections_bounded_per_backoff_window(
    threshold: int, events: list[tuple[str, float]]
) -> None:
    """With a verifier that always rejects, attempts never overlap and the number of
    rejections is at most threshold + one per elapsed back-off window."""
    clock = FakeClock()
    g = AuthGuard(threshold=threshold, backoff=300.0, clock=clock)
    started = clock.now
    for kind, seconds in events:
        if kind == "begin" and g.begin_attempt():
            assert g.in_flight == 1
        elif kind == "end" and g.in_flight:
            g.end_attempt(False)
        elif kind == "tick":
            clock.advance(seconds)
    elapsed = clock.now - started
    assert g.rejections_total <= threshold + int(elapsed // 300.0)
