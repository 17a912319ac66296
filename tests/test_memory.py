"""memory.Trimmer: trims once a crowd of connections has gone, not on every tick."""

from __future__ import annotations

from pycntlm.memory import Trimmer, _malloc_trim


def test_trims_once_after_the_crowd_has_gone() -> None:
    calls: list[int] = []
    t = Trimmer(trim=lambda pad: calls.append(pad) or 1, after=500)
    assert not any(t.observe(n) for n in (0, 10, 2000, 1900, 1200, 600))  # still crowded
    assert t.observe(400) and calls == [0]  # 1600 fewer than the peak, under a quarter
    assert not t.observe(300) and not t.observe(0)  # the peak is now 400: nothing to give back
    assert t.trims == 1


def test_small_swings_never_trim() -> None:
    t = Trimmer(trim=lambda pad: 1, after=500)
    assert not any(t.observe(n) for n in [100, 0] * 50)
    assert t.trims == 0


def test_glibc_malloc_trim_is_found_here() -> None:
    trim = _malloc_trim()
    assert trim is not None and trim(0) in (0, 1)
