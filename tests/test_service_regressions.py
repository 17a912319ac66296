"""Service start-up regressions (each failed before its fix): a direct-only configuration
(no Proxy line) crashed with a traceback; a failed start left a stale pid file."""

from __future__ import annotations

from pathlib import Path

from servers.procs import free_port
from test_service import PYCNTLM, run, write_conf


async def test_direct_only_config_is_either_served_or_refused_in_one_line(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "cntlm.conf", ["NoProxy *", f"Listen 127.0.0.1:{free_port()}"])
    check = await run([*PYCNTLM, "-t", "-c", str(conf)])
    try:
        start = await run([*PYCNTLM, "-c", str(conf), "-f"], timeout=3)
    except TimeoutError:  # still running after 3 s: it serves
        assert check.rc == 0, check.err
        return
    assert "Traceback" not in start.err, start.err
    assert start.rc == 2 and start.err.count("\n") == 1, start.err
    assert check.rc == 2, f"-t accepted what the server refuses: {check.out}"


async def test_pidfile_removed_when_start_up_fails_after_writing_it(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "cntlm.conf", ["NoProxy *", f"Listen 127.0.0.1:{free_port()}"])
    pidfile = tmp_path / "pycntlm.pid"
    argv = [*PYCNTLM, "-c", str(conf), "-f", "-P", str(pidfile), "-U", "no-such-user-here"]
    done = await run(argv, timeout=10)
    assert done.rc == 2, done.err
    assert "no such user" in done.err
    assert not pidfile.exists(), "stale pid file left behind after a failed start"
