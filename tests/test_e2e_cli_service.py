"""The real process: password files and systemd credentials, -U, SighupReload no."""

from __future__ import annotations

import os
import pwd
import signal
from pathlib import Path

from servers.procs import free_port
from test_e2e_cli import curl_status, pycntlm_process, write_conf

from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent


def base_lines(parent: str, port: int) -> list[str]:
    return [
        "Username testuser",
        "Domain corp-uk",
        f"Proxy {parent}",
        f"Listen 127.0.0.1:{port}",
    ]


async def test_password_file(tmp_path: Path, parent: NtlmParent, origin: Origin) -> None:
    secret = tmp_path / "password"
    secret.write_text("password\n")
    secret.chmod(0o600)
    port = free_port()
    conf = write_conf(
        tmp_path / "c.conf", [*base_lines(parent.address, port), f"PasswordFile {secret}"]
    )
    async with pycntlm_process(["-c", str(conf), "-f"], port, tmp_path) as p:
        assert await curl_status(port, origin.url("/")) == 200
        assert await p.terminate() == 0
    assert parent.stats.logons_ok == 1


async def test_systemd_credentials_directory(
    tmp_path: Path, parent: NtlmParent, origin: Origin, monkeypatch: object
) -> None:
    creds_dir = tmp_path / "credentials"
    creds_dir.mkdir()
    (creds_dir / "password").write_text("password")
    port = free_port()
    conf = write_conf(tmp_path / "c.conf", base_lines(parent.address, port))
    os.environ["CREDENTIALS_DIRECTORY"] = str(creds_dir)
    try:
        async with pycntlm_process(["-c", str(conf), "-f"], port, tmp_path) as p:
            assert await curl_status(port, origin.url("/")) == 200
            assert await p.terminate() == 0
    finally:
        del os.environ["CREDENTIALS_DIRECTORY"]
    assert parent.stats.logons_ok == 1


async def test_dash_u_drops_to_an_unprivileged_user(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    assert os.geteuid() == 0, "this test runs as root (as CI does) to check the drop"
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    conf = write_conf(tmp_path / "c.conf", [*base_lines(parent.address, port), "Password password"])
    conf.chmod(0o644)
    tmp_path.chmod(0o755)
    async with pycntlm_process(["-c", str(conf), "-f", "-U", "nobody"], port, tmp_path) as p:
        status = Path(f"/proc/{p.proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        groups = next(line for line in status.splitlines() if line.startswith("Groups:")).split()[
            1:
        ]
        assert set(uids) == {str(nobody.pw_uid)}
        assert groups == []
        assert await curl_status(port, origin.url("/")) == 200
        assert await p.terminate() == 0


async def test_sighup_stops_with_sighupreload_no(tmp_path: Path, parent: NtlmParent) -> None:
    port = free_port()
    conf = write_conf(
        tmp_path / "c.conf",
        [*base_lines(parent.address, port), "Password password", "SighupReload no"],
    )
    async with pycntlm_process(["-c", str(conf), "-f"], port, tmp_path) as p:
        p.proc.send_signal(signal.SIGHUP)
        assert await p.proc.wait() == 0
