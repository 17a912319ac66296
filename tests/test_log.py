"""log.ConsoleHandler: access lines gathered into one write, everything else at once, in order."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator

import pytest

from pycntlm import log as logsetup


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


class FakeLater:
    """Stands in for loop.call_later: keeps the callbacks; run() fires them."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> object:
        self.calls.append((delay, callback))
        return None

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for _, callback in calls:
            callback()


@pytest.fixture
def console() -> Iterator[tuple[CountingStream, FakeLater]]:
    stream = CountingStream()
    logsetup.setup(stream=stream)
    later = FakeLater()
    logsetup.batch_access_lines(later)
    try:
        yield stream, later
    finally:
        logsetup.batch_access_lines(None)
        logging.getLogger("pycntlm").handlers.clear()


def test_access_lines_are_written_together_after_the_delay(
    console: tuple[CountingStream, FakeLater],
) -> None:
    stream, later = console
    access = logging.getLogger("pycntlm.access")
    for i in range(5):
        access.info("127.0.0.1 GET http://a/%d parent p 200 1 0.1ms", i)
    assert stream.getvalue() == "" and stream.writes == 0
    assert len(later.calls) == 1 and later.calls[0][0] == logsetup.ACCESS_DELAY
    later.run()
    lines = stream.getvalue().splitlines()
    assert [line.split()[6] for line in lines] == [f"http://a/{i}" for i in range(5)]
    assert stream.writes == 1


def test_other_records_go_out_at_once_after_the_waiting_lines(
    console: tuple[CountingStream, FakeLater],
) -> None:
    stream, later = console
    logging.getLogger("pycntlm.access").info("first access line")
    logging.getLogger("pycntlm").warning("a warning")
    text = stream.getvalue()
    assert "first access line" in text and "a warning" in text
    assert text.index("first access line") < text.index("a warning")
    later.run()  # the timer then finds nothing to write
    assert stream.getvalue() == text


def test_a_full_batch_is_written_without_waiting(
    console: tuple[CountingStream, FakeLater],
) -> None:
    stream, _ = console
    access = logging.getLogger("pycntlm.access")
    for i in range(logsetup.ACCESS_BATCH):
        access.info("line %d", i)
    assert len(stream.getvalue().splitlines()) == logsetup.ACCESS_BATCH
    assert stream.writes == 1


def test_stopping_the_batching_writes_what_waits(
    console: tuple[CountingStream, FakeLater],
) -> None:
    stream, _ = console
    logging.getLogger("pycntlm.access").info("waiting line")
    logsetup.batch_access_lines(None)
    assert "waiting line" in stream.getvalue()
    logging.getLogger("pycntlm.access").info("next line")  # not batched any more
    assert "next line" in stream.getvalue()


def test_secrets_are_still_redacted(console: tuple[CountingStream, FakeLater]) -> None:
    stream, later = console
    logsetup.REDACTOR.add("s3cr3t-password")
    logging.getLogger("pycntlm.access").info("GET http://u:s3cr3t-password@a/ 200")
    later.run()
    assert "s3cr3t-password" not in stream.getvalue() and "***" in stream.getvalue()
