"""Upstreams: sticky failover, fail-back probes, all-down ordering, health, with a fake clock."""

from __future__ import annotations

import pytest
from fakeclock import FakeClock
from hypothesis import given
from hypothesis import strategies as st

from pycntlm.config import HostPort
from pycntlm.upstreams import Upstreams

A = HostPort("a.example", 3128)
B = HostPort("b.example", 3128)
C = HostPort("c.example", 8080)
D = HostPort("2001:db8::1", 3128)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def make(clock: FakeClock, *parents: HostPort, interval: float = 60.0) -> Upstreams:
    return Upstreams(parents, clock=clock, failback_interval=interval)


def test_healthy_parents_in_configured_order(clock: FakeClock) -> None:
    u = make(clock, A, B, C)
    assert u.current == A
    assert u.candidates() == [A, B, C]
    assert u.failovers == 0


def test_first_down_second_used_and_sticky(clock: FakeClock) -> None:
    u = make(clock, A, B, C)
    u.mark_failed(A)
    assert u.current == B
    assert u.failovers == 1
    assert u.candidates() == [B, C, A]
    clock.advance(30)
    assert u.candidates() == [B, C, A]
    # B keeps working; A is not tried first before its retry time.
    u.mark_ok(B)
    assert u.current == B
    assert u.candidates() == [B, C, A]


def test_probe_after_interval_then_fail_back_on_success(clock: FakeClock) -> None:
    u = make(clock, A, B, C)
    u.mark_failed(A)
    clock.advance(59.9)
    assert u.candidates()[0] == B
    clock.advance(0.1)
    assert u.candidates() == [A, B, C]
    u.mark_ok(A)
    assert u.current == A
    assert u.failbacks == 1
    assert u.candidates() == [A, B, C]
    assert u.health()[0] == (A, True, None)


def test_failed_probe_keeps_current_and_waits_another_interval(clock: FakeClock) -> None:
    u = make(clock, A, B, C)
    u.mark_failed(A)
    clock.advance(60)
    assert u.candidates()[0] == A
    u.mark_failed(A)
    assert u.current == B
    assert u.failovers == 1
    assert u.candidates() == [B, C, A]
    clock.advance(59)
    assert u.candidates() == [B, C, A]
    clock.advance(1)
    assert u.candidates() == [A, B, C]


def test_a_due_probe_is_handed_out_once_per_interval(clock: FakeClock) -> None:
    u = make(clock, A, B)
    u.mark_failed(A)
    clock.advance(60)
    assert u.candidates() == [A, B]
    # A burst of new connections while the probe is in flight does not wait on A.
    assert u.candidates() == [B, A]
    assert u.candidates() == [B, A]
    # No verdict came back (e.g. the client went away): A is probed again an interval later.
    clock.advance(60)
    assert u.candidates() == [A, B]


def test_sticky_after_the_failed_one_recovers_without_probe(clock: FakeClock) -> None:
    u = make(clock, A, B, C)
    u.mark_failed(A)
    u.mark_failed(B)
    assert u.current == C
    assert u.failovers == 2
    assert u.candidates() == [C, A, B]
    # A less preferred parent succeeding does not move current.
    u.mark_ok(C)
    assert u.current == C


def test_less_preferred_parent_failing_does_not_move_current(clock: FakeClock) -> None:
    u = make(clock, A, B, C)
    u.mark_failed(B)
    assert u.current == A
    assert u.failovers == 0
    assert u.candidates() == [A, C, B]


def test_rotation_wraps_from_the_last_parent(clock: FakeClock) -> None:
    u = make(clock, A, B, C, D)
    u.mark_failed(A)
    u.mark_failed(B)
    u.mark_ok(A)
    assert u.current == A
    u.mark_failed(A)
    assert u.current == C
    assert u.candidates() == [C, D, A, B]
    u.mark_failed(C)
    assert u.current == D
    u.mark_failed(D)
    # Everything is down now: current stays where it was, the order is the preferred one.
    assert u.current == D
    assert u.failovers == 4
    assert u.candidates() == [A, B, C, D]


def test_wrap_to_a_more_preferred_healthy_parent(clock: FakeClock) -> None:
    u = make(clock, A, B, C)
    u.mark_failed(A)
    u.mark_failed(B)
    u.mark_ok(A)
    u.mark_failed(A)
    u.mark_ok(B)
    assert u.current == B
    u.mark_failed(A)  # still down, not current
    u.mark_ok(A)
    assert u.current == A
    u.mark_failed(A)
    assert u.current == B
    u.mark_failed(B)
    assert u.current == C
    u.mark_ok(A)
    u.mark_failed(C)
    # From the last parent, the next healthy one wraps to A.
    assert u.current == A
    assert u.candidates() == [A, B, C]


def test_all_down_returns_all_in_preferred_order(clock: FakeClock) -> None:
    u = make(clock, A, B, C)
    u.mark_failed(A)
    u.mark_failed(B)
    u.mark_failed(C)
    assert u.current == C
    assert u.candidates() == [A, B, C]
    assert u.candidates() == [A, B, C]
    assert [up for _, up, _ in u.health()] == [False, False, False]


def test_all_down_then_one_recovers_becomes_current(clock: FakeClock) -> None:
    u = make(clock, A, B, C)
    for parent in (A, B, C):
        u.mark_failed(parent)
    u.mark_ok(B)
    assert u.current == B
    assert u.candidates() == [B, A, C]


def test_all_down_due_ones_come_first(clock: FakeClock) -> None:
    u = make(clock, A, B, C)
    u.mark_failed(A)
    u.mark_failed(B)
    clock.advance(30)
    u.mark_failed(C)
    clock.advance(30)
    assert u.current == C
    # A and B are due (60 s), C is not (30 s).
    assert u.candidates() == [A, B, C]
    clock.advance(15)
    assert u.candidates() == [A, B, C]  # none due now: plain preferred order


def test_one_parent(clock: FakeClock) -> None:
    u = make(clock, A)
    assert u.candidates() == [A]
    u.mark_failed(A)
    assert u.current == A
    assert u.failovers == 0
    assert u.candidates() == [A]
    u.mark_ok(A)
    assert u.candidates() == [A]
    assert u.health() == [(A, True, None)]


def test_duplicates_are_kept_once(clock: FakeClock) -> None:
    u = make(clock, A, B, A, C, B)
    assert u.parents == (A, B, C)
    assert u.candidates() == [A, B, C]


def test_health_reports_seconds_since_failure(clock: FakeClock) -> None:
    u = make(clock, A, B)
    u.mark_failed(B)
    clock.advance(12.5)
    assert u.health() == [(A, True, None), (B, False, 12.5)]


def test_no_parents_means_direct_only(clock: FakeClock) -> None:
    u = make(clock)
    assert u.candidates() == []
    assert u.current is None
    assert u.health() == []


def test_invalid_arguments(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="negative"):
        make(clock, A, interval=-1)
    u = make(clock, A)
    with pytest.raises(ValueError, match="unknown parent"):
        u.mark_failed(B)
    with pytest.raises(ValueError, match="unknown parent"):
        u.mark_ok(B)


def test_zero_interval_probes_immediately(clock: FakeClock) -> None:
    u = make(clock, A, B, interval=0.0)
    u.mark_failed(A)
    assert u.current == B
    assert u.candidates() == [A, B]


_PARENTS = [HostPort(f"p{i}.example", 3128) for i in range(5)]
_steps = st.lists(
    st.tuples(
        st.sampled_from(["fail", "ok", "tick", "candidates"]),
        st.integers(0, 4),
        st.floats(0, 100),
    ),
    max_size=40,
)


@given(st.integers(1, 5), _steps)
def test_invariants_under_random_events(count: int, steps: list[tuple[str, int, float]]) -> None:
    clock = FakeClock()
    parents = tuple(_PARENTS[:count])
    u = Upstreams(parents, clock=clock, failback_interval=60.0)
    for action, index, seconds in steps:
        parent = parents[index % count]
        if action == "fail":
            u.mark_failed(parent)
        elif action == "ok":
            u.mark_ok(parent)
        elif action == "tick":
            clock.advance(seconds)
        order = u.candidates()
        assert sorted(order, key=parents.index) == list(parents)
        healthy = [p for p, up, _ in u.health() if up]
        if healthy:
            # Current is healthy, and the healthy parents are tried in configured order
            # starting at current (wrapping); only down parents (probes, dead ones) come
            # before or between them.
            assert u.current in healthy
            start = parents.index(u.current)
            rotation = [parents[(start + i) % count] for i in range(count)]
            assert [p for p in order if p in healthy] == [p for p in rotation if p in healthy]
