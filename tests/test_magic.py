"""-M magic dialect detection against verifying NTLM parents that accept only some dialects.

NtlmParent's lm_compat_level expresses "NTLMv2 only" (5), "no LM" (4) and "everything" (0-3);
PickyParent below adds what pyspnego cannot: a parent that refuses NTLMv2 but takes NTLMv1 etc.
Every test checks the failed logons the parent counted against the number magic reports, and
the probes it reports sent against the connections the parent (or origin) accepted. The budget
(at most 4 failed logons, as cntlm 0.92.3) is measured against the installed cntlm's -M.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from asyncio.subprocess import DEVNULL, PIPE, STDOUT
from pathlib import Path

import pytest
from proxyrun import PASS_LM, PASS_NT, PASS_NTLMV2, USER, conf
from servers.tls import TlsMaterial

from pycntlm import config, magic
from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent, _dialect
from pycntlm.errors import ConfigError

URL = "http://127.0.0.1:1/"  # nothing listens: an accepted probe gets the parent's 502


class PickyParent(NtlmParent):
    """A verifying parent that refuses the Type 3 of some dialects (as seen by the parent:
    "NTLMv2", "NTLM2SR", "NTLM" for NTLMv1 with or without LM, "LM")."""

    def __init__(self, refuse: set[str], **kwargs: object) -> None:
        super().__init__([USER], lm_compat_level=0, **kwargs)  # type: ignore[arg-type]
        self.refuse = refuse

    def _step(self, conn, scheme, token):  # type: ignore[no-untyped-def]
        if token.startswith(b"NTLMSSP\x00\x03\x00\x00\x00") and _dialect(token) in self.refuse:
            return self._failed(conn, "dialect refused")
        return super()._step(conn, scheme, token)


def cfg_for(address: str, tmp_path: Path, creds_lines: str = "") -> config.Config:
    text = conf(address, creds_lines=creds_lines)
    return config.parse_file(text, str(tmp_path / "cntlm.conf"))


async def test_ntlmv2_parent_first_profile_no_failed_logon(tmp_path: Path, origin: Origin) -> None:
    async with NtlmParent([USER], lm_compat_level=5) as parent:
        cfg = cfg_for(parent.address, tmp_path)
        echoed: list[str] = []
        result = await magic.detect(cfg, origin.url("/"), echo=echoed.append)
    assert result.found is not None and result.found.dialect == "NTLMv2"
    assert result.failed_logons == parent.stats.logons_failed == 0
    assert result.probes_sent == parent.stats.connections == 1
    assert result.verdict == (
        "Probes sent: 1 (0 failed logons; at most 4, as cntlm 0.92.3's probe)",
    )
    assert echoed == list(result.probe_lines) == ["Config profile  1/5... OK (HTTP code: 200)"]
    assert magic.profile_lines(cfg, result) == [
        "----------------------------[ Profile  0 ]------",
        "Auth            NTLMv2",
        f"PassNTLMv2      {PASS_NTLMV2}",
        "------------------------------------------------",
    ]
    assert origin.stats.requests == 1  # the probe's GET reached the URL once


@pytest.mark.parametrize(
    ("refuse", "dialect", "lines", "failed"),
    [
        ({"NTLMv2"}, "NTLM2SR", [f"PassNT          {PASS_NT}"], 1),
        ({"NTLMv2", "NTLM2SR"}, "NT", [f"PassNT          {PASS_NT}"], 2),
        # NT rejected -> NTLM (same NT response) skipped; an LM-only verifier is found by LM
        ({"NTLMv2", "NTLM2SR", "NTLM"}, "LM", [f"PassLM          {PASS_LM}"], 3),
    ],
)
async def test_weaker_dialects_found_in_order(
    tmp_path: Path, refuse: set[str], dialect: str, lines: list[str], failed: int
) -> None:
    async with PickyParent(refuse) as parent:
        cfg = cfg_for(parent.address, tmp_path)
        result = await magic.detect(cfg, URL)
    assert result.found is not None and result.found.dialect == dialect
    assert result.failed_logons == parent.stats.logons_failed == failed
    assert parent.stats.logons_ok == 1
    assert result.probes_sent == parent.stats.connections == failed + 1
    assert magic.profile_lines(cfg, result)[1:-1] == [f"Auth            {dialect}", *lines]
    logons = "failed logon" if failed == 1 else "failed logons"
    cost = f"Probes sent: {failed + 1} ({failed} {logons}; at most 4, as cntlm 0.92.3's probe)"
    assert result.verdict == (cost,)


async def test_wrong_password_costs_at_most_four_failed_logons(tmp_path: Path) -> None:
    async with NtlmParent([USER], lm_compat_level=0) as parent:
        cfg = cfg_for(parent.address, tmp_path, creds_lines="Password wrong")
        result = await magic.detect(cfg, URL)
    assert result.found is None
    assert result.failed_logons == parent.stats.logons_failed == magic.MAX_FAILED_LOGONS == 4
    assert result.probes_sent == parent.stats.connections == 4  # the NTLM profile was skipped
    assert parent.stats.logons_ok == 0
    assert result.probe_lines == (
        "Config profile  1/5... Credentials rejected",
        "Config profile  2/5... Credentials rejected",
        "Config profile  3/5... Credentials rejected",
        "Config profile  4/5... Skipped (same NT response as NT)",
        "Config profile  5/5... Credentials rejected",
    )
    assert result.verdict[1:] == (
        "Wrong credentials, invalid URL or proxy doesn't support NTLM.",
        "Probes sent: 4 (4 failed logons; at most 4, as cntlm 0.92.3's probe)",
    )
    assert magic.profile_lines(cfg, result) == []


async def test_failed_logon_budget_is_what_cntlm_costs(tmp_path: Path) -> None:
    """The "at most 4, as cntlm 0.92.3's probe" of the report, measured: the installed cntlm's
    -M with a wrong password against the same kind of parent costs as many failed logons."""
    async with NtlmParent([USER], lm_compat_level=0) as parent:
        argv = ["cntlm", "-c", os.devnull, "-u", "testuser", "-d", "corp-uk", "-p", "wrong"]
        proc = await asyncio.create_subprocess_exec(
            *argv, "-M", URL, parent.address, stdin=DEVNULL, stdout=PIPE, stderr=STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    profiles = re.findall(
        r"^Config profile +\d+/(\d+)\.\.\. Credentials rejected$", out.decode(), re.M
    )
    assert profiles == ["4"] * 4, out
    assert parent.stats.logons_failed == parent.stats.connections == magic.MAX_FAILED_LOGONS


async def test_hashes_only_probe_what_they_can(tmp_path: Path) -> None:
    async with PickyParent({"NTLMv2"}) as parent:
        cfg = cfg_for(parent.address, tmp_path, creds_lines=f"PassNTLMv2 {PASS_NTLMV2}")
        result = await magic.detect(cfg, URL)
    assert result.found is None
    assert result.failed_logons == parent.stats.logons_failed == 1
    assert result.probes_sent == parent.stats.connections == 1  # skipped probes send nothing
    assert [p.outcome for p in result.probes] == ["rejected"] + ["skipped"] * 4
    assert "needs Password or PassNT" in result.probe_lines[1]


async def test_pass_nt_only_finds_ntlm2sr(tmp_path: Path) -> None:
    async with PickyParent({"NTLMv2"}) as parent:
        cfg = cfg_for(parent.address, tmp_path, creds_lines=f"PassNT {PASS_NT}")
        result = await magic.detect(cfg, URL)
    assert result.found is not None and result.found.dialect == "NTLM2SR"
    assert magic.profile_lines(cfg, result)[2] == f"PassNT          {PASS_NT}"


async def test_open_proxy_stops_at_once(tmp_path: Path, origin: Origin) -> None:
    """The origin answers our proxy request without a 407: no authentication needed."""
    result = await magic.detect(cfg_for(origin.address, tmp_path), origin.url("/"))
    assert result.open_proxy and result.found is None and result.failed_logons == 0
    assert len(result.probes) == 1
    assert result.probes_sent == origin.stats.requests == 1
    assert result.probe_lines[0].startswith("Config profile  1/5... Auth not required (HTTP code:")
    assert result.verdict[1] == "Your proxy is open, you don't need another proxy."


async def test_parent_without_ntlm_stops_at_once(tmp_path: Path) -> None:
    async with NtlmParent([USER], offer=('Basic realm="corp"',)) as parent:
        result = await magic.detect(cfg_for(parent.address, tmp_path), URL)
    assert result.probe_lines == (
        "Config profile  1/5... Proxy doesn't allow NTLM, pycntlm won't help",
    )
    assert result.failed_logons == parent.stats.logons_failed == 0
    assert result.probes_sent == parent.stats.connections == 1


async def test_parent_closing_after_challenge_stops_at_once(tmp_path: Path) -> None:
    async with NtlmParent([USER], close_after_type1=True) as parent:
        result = await magic.detect(cfg_for(parent.address, tmp_path), URL)
    assert [p.outcome for p in result.probes] == ["closed"]
    assert result.failed_logons == parent.stats.logons_failed == 0
    assert result.probes_sent == parent.stats.type1_seen == 1


async def test_unreachable_parent(tmp_path: Path) -> None:
    from test_frontends import free_port

    result = await magic.detect(cfg_for(f"127.0.0.1:{free_port()}", tmp_path), URL)
    assert [p.outcome for p in result.probes] == ["unreachable"]
    assert "failed, bailing out" in result.probe_lines[0]
    assert result.probes_sent == 0
    assert (
        result.verdict[-1] == "Probes sent: 0 (0 failed logons; at most 4, as cntlm 0.92.3's probe)"
    )


async def test_https_url_probes_with_connect(
    tmp_path: Path, tls_origin: Origin, server_tls: TlsMaterial
) -> None:
    async with PickyParent({"NTLMv2"}) as parent:
        url = f"https://localhost:{tls_origin.port}/"
        result = await magic.detect(cfg_for(parent.address, tmp_path), url)
    assert result.found is not None and result.found.dialect == "NTLM2SR"
    assert result.found.status == 200  # "Connection established"
    assert parent.stats.requests == 1 and parent.stats.logons_failed == 1


@pytest.mark.parametrize(
    ("text", "url", "message"),
    [
        ("Username u\nPassword p\n", URL, "-M needs a parent proxy"),
        ("Proxy 127.0.0.1:1\nUsername u\n", URL, "no credentials"),
        ("Proxy 127.0.0.1:1\nPassword p\n", URL, "Username is not set"),
        ("Proxy 127.0.0.1:1\nUsername u\nPassword p\n", "ftp://x/", "-M needs an http://"),
        ("Proxy 127.0.0.1:1\nUsername u\nPassword p\n", "www.example.com", "-M needs an http://"),
    ],
)
async def test_user_errors(text: str, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        await magic.detect(config.parse_file(text, "c.conf"), url)


async def test_magic_main_prints_cntlm_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with PickyParent({"NTLMv2"}) as parent:
        cfg = cfg_for(parent.address, tmp_path)
        cfg = dataclasses.replace(cfg, magic_url=URL)
        # magic_main runs its own event loop: in a thread, while the parent serves on ours
        code = await asyncio.wait_for(asyncio.to_thread(magic.magic_main, cfg), 30)
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        "Config profile  1/5... Credentials rejected",
        "Config profile  2/5... OK (HTTP code: 502)",
        "----------------------------[ Profile  1 ]------",
        "Auth            NTLM2SR",
        f"PassNT          {PASS_NT}",
        "------------------------------------------------",
        "Probes sent: 2 (1 failed logon; at most 4, as cntlm 0.92.3's probe)",
    ]
    assert parent.stats.connections == 2 and parent.stats.logons_failed == 1
