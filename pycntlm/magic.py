"""-M URL: find the strongest NTLM dialect the parent accepts (cntlm's "magic" detection).

Owns: the probe order, one fresh connection per probe to the first parent (over TLS for a
`Proxy https://` parent; GET URL for http://, CONNECT host:port for https:// URLs), the two NTLM
legs of each probe, the report cntlm prints (plus our closing line: how many probes reached the
parent and how many of them were failed logons), and the budget of failed logons. Must not: write
anything but the report (magic_main prints it), put a secret in MagicResult, a log or an
exception, or cost more failed logons than cntlm's probe.

Failed logons (each one counts towards the account's lockout threshold on the domain):
- cntlm 0.92.3 (Debian) probes up to 4 profiles, so a wrong password costs 4 failed logons
  (older cntlm releases probe 11 profiles, later forks 5); tests/test_magic.py measures it
  against the installed cntlm.
- We probe PROFILES strongest first, as cntlm ranks them (NTLMv2, NTLM2SR, NT, NTLM, LM), and
  stop at the first that works. NTLM is skipped once NT was rejected: both send the same NTLMv1
  NT response, and a verifier that checks the LM response instead is found by LM. So a wrong
  password costs at most 4 failed logons, never more than cntlm; MAX_FAILED_LOGONS enforces it.
  Profiles whose hash is not configured (e.g. only PassNTLMv2 given) are skipped and cost none.
- A probe stops everything, at no cost, when the parent needs no authentication, does not offer
  NTLM, cannot be reached, or closes the connection after its challenge.
"""

from __future__ import annotations

import dataclasses
import platform
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pycntlm import http1
from pycntlm.auth import NtlmHandshake, offers_ntlm
from pycntlm.config import Config, HostPort
from pycntlm.context import parent_tls_context
from pycntlm.creds import Credentials, from_config, missing_for
from pycntlm.errors import ConfigError, HandshakeError, ProtocolError
from pycntlm.exchange import why
from pycntlm.forward import skip_body, upstream_head
from pycntlm.http1 import Request
from pycntlm.net import Conn, ConnectionClosed, open_conn

PROFILES = ("NTLMv2", "NTLM2SR", "NT", "NTLM", "LM")  # strongest first
MAX_FAILED_LOGONS = 4  # cntlm 0.92.3's probe: 4 profiles
_HASHES = {  # the Pass* lines printed for a profile, in cntlm's order
    "NTLMv2": (("PassNTLMv2", "ntlmv2_hash"),),
    "NTLM2SR": (("PassNT", "nt_hash"),),
    "NT": (("PassNT", "nt_hash"),),
    "NTLM": (("PassNT", "nt_hash"), ("PassLM", "lm_hash")),
    "LM": (("PassLM", "lm_hash"),),
}
_NOT_SENT = ("skipped", "unreachable")  # probe outcomes that put no request on the wire
Echo = Callable[[str], None]


@dataclass(frozen=True)
class Probe:
    """One profile's outcome: ok, rejected, skipped, open, no-ntlm, closed or unreachable."""

    profile: int  # index in PROFILES
    dialect: str
    outcome: str
    status: int | None  # the parent's final HTTP status, when it answered
    text: str  # what cntlm prints after "Config profile  N/M... "
    type3_sent: bool = False


@dataclass(frozen=True)
class MagicResult:
    """What the detection found. Holds no secret: see profile_lines() for the Pass* lines."""

    parent: str
    url: str
    probes: tuple[Probe, ...]
    found: Probe | None
    failed_logons: int  # Type 3 messages the parent did not accept
    probes_sent: int  # probes whose request reached the parent, whatever their outcome
    open_proxy: bool  # the parent let us through without authentication
    verdict: tuple[str, ...]  # the lines printed after the probes (and the Pass* block)

    @property
    def probe_lines(self) -> tuple[str, ...]:
        """cntlm's "Config profile  N/M... outcome" lines."""
        return tuple(_probe_line(p) for p in self.probes)


def _probe_line(probe: Probe) -> str:
    return f"Config profile {probe.profile + 1:2d}/{len(PROFILES)}... {probe.text}"


def _credentials(config: Config) -> Credentials:
    """Credentials from the config, for whichever dialect its hashes allow."""
    first: ConfigError | None = None
    for dialect in (config.auth, *PROFILES):
        try:
            return from_config(dataclasses.replace(config, auth=dialect), platform.node())
        except ConfigError as exc:
            first = first or exc
    assert first is not None
    raise first


def _request(url: str) -> tuple[Request, str, str]:
    """(request without auth, its target, the method) for a probe of `url`."""
    try:
        target = http1.request_target(Request("GET", url, "HTTP/1.1", ()))
    except ProtocolError:
        raise ConfigError("-M needs an http:// or https:// URL") from None
    host = f"[{target.host}]" if ":" in target.host else target.host
    authority = f"{host}:{target.port}"
    if target.scheme == "https":  # a parent is asked for https:// with CONNECT
        return (
            Request("CONNECT", authority, "HTTP/1.1", (("Host", authority),)),
            authority,
            "CONNECT",
        )
    uri = f"http://{authority}{target.path}"
    return Request("GET", uri, "HTTP/1.1", (("Host", authority),)), uri, "GET"


async def detect(config: Config, url: str, *, echo: Echo | None = None) -> MagicResult:
    """Probe the first parent with each profile in turn until one works (see the module
    docstring for the cost in failed logons). `echo` gets each probe line as it is known.
    Raises ConfigError for a missing parent, missing credentials or a bad URL."""
    if not config.proxies:
        raise ConfigError("-M needs a parent proxy (Proxy in the config, or host:port)")
    creds = _credentials(config)
    req, target, method = _request(url)
    parent = config.proxies[0]
    tls = parent_tls_context(config) if parent.tls else None  # ConfigError: bad ProxyCAFile
    probes: list[Probe] = []
    for index, dialect in enumerate(PROFILES):
        probe = _skip(creds, index, dialect, probes)
        if probe is None:
            probe = await _probe(config, creds, parent, tls, index, dialect, (req, target, method))
        probes.append(probe)
        if echo is not None:
            echo(_probe_line(probe))
        if probe.outcome not in ("rejected", "skipped"):
            break
    found = probes[-1] if probes[-1].outcome == "ok" else None
    failed = sum(1 for p in probes if p.type3_sent and p.outcome != "ok")
    sent = sum(1 for p in probes if p.outcome not in _NOT_SENT)
    open_proxy = probes[-1].outcome == "open"
    verdict = tuple(_verdict(found, open_proxy, sent, failed))
    return MagicResult(str(parent), url, tuple(probes), found, failed, sent, open_proxy, verdict)


def _skip(creds: Credentials, index: int, dialect: str, done: list[Probe]) -> Probe | None:
    """A skipped probe, or None when this profile is to be tried."""
    problem = missing_for(creds, dialect)
    if problem is not None:
        return Probe(index, dialect, "skipped", None, f"Skipped ({problem})")
    if sum(1 for p in done if p.type3_sent) >= MAX_FAILED_LOGONS:
        return Probe(index, dialect, "skipped", None, "Skipped (failed logon budget spent)")
    if dialect == "NTLM" and any(p.dialect == "NT" and p.outcome == "rejected" for p in done):
        return Probe(index, dialect, "skipped", None, "Skipped (same NT response as NT)")
    return None


async def _probe(
    config: Config,
    creds: Credentials,
    parent: HostPort,
    tls: ssl.SSLContext | None,
    index: int,
    dialect: str,
    request: tuple[Request, str, str],
) -> Probe:
    def result(outcome: str, status: int | None, text: str, sent: bool = False) -> Probe:
        return Probe(index, dialect, outcome, status, text, sent)

    try:
        conn = await open_conn(parent.host, parent.port, config.connect_timeout, tls)
    except ssl.SSLError as exc:  # e.g. the certificate: say so, as cntlm would say nothing
        return result("unreachable", None, f"Connection to proxy {parent} failed ({why(exc)})")
    except (OSError, TimeoutError):
        return result("unreachable", None, f"Connection to proxy {parent} failed, bailing out")
    try:
        return await _legs(config, conn, NtlmHandshake(creds, dialect), request, result)
    except HandshakeError as exc:
        return result("closed", None, f"Unusable NTLM challenge ({exc})")
    except (ProtocolError, ConnectionClosed, TimeoutError, OSError):
        return result("closed", None, "Connection closed!? Proxy doesn't talk to us.")
    finally:
        conn.close()


async def _legs(
    config: Config,
    conn: Conn,
    hs: NtlmHandshake,
    request: tuple[Request, str, str],
    result: Callable[..., Probe],
) -> Probe:
    req, target, method = request
    timeout = config.handshake_timeout
    head = upstream_head(req, target, auth=hs.start(), substitutions=config.headers)
    await conn.send(head, timeout)
    raw = await conn.read_head(timeout)
    if raw is None:
        return result("closed", None, "Connection closed!? Proxy doesn't talk to us.")
    resp = http1.parse_response(raw)
    if resp.status != 407:
        return result("open", resp.status, f"Auth not required (HTTP code: {resp.status})")
    challenges = http1.header_values(resp.headers, "Proxy-Authenticate")
    if not offers_ntlm(challenges):
        return result("no-ntlm", 407, "Proxy doesn't allow NTLM, pycntlm won't help")
    body = http1.response_body(resp, method)
    kept = http1.response_keeps_alive(resp, method) and await skip_body(conn, body, timeout)
    if not kept or conn.at_eof:
        return result("closed", 407, "Connection closed after the challenge; cannot probe")
    head = upstream_head(req, target, auth=hs.respond(challenges), substitutions=config.headers)
    await conn.send(head, timeout)
    try:
        raw = await conn.read_head(timeout)
    except (ProtocolError, ConnectionClosed, TimeoutError, OSError):
        raw = None
    if raw is None:  # some parents close instead of answering 407: count it as a failure
        return result("rejected", None, "Connection closed: credentials rejected?", True)
    resp = http1.parse_response(raw)
    if resp.status == 407:
        return result("rejected", 407, "Credentials rejected", True)
    return result("ok", resp.status, f"OK (HTTP code: {resp.status})", True)


def _verdict(found: Probe | None, open_proxy: bool, sent: int, failed: int) -> list[str]:
    logons = "failed logon" if failed == 1 else "failed logons"
    cost = (
        f"Probes sent: {sent} ({failed} {logons}; "
        f"at most {MAX_FAILED_LOGONS}, as cntlm 0.92.3's probe)"
    )
    if found is not None:
        return [cost]
    if open_proxy:
        return ["", "Your proxy is open, you don't need another proxy.", cost]
    return ["", "Wrong credentials, invalid URL or proxy doesn't support NTLM.", cost]


def profile_lines(config: Config, result: MagicResult) -> list[str]:
    """The config block cntlm prints for the profile found (Auth and the Pass* hashes in
    cntlm's inverted hex form): secrets, for stdout only. Empty when nothing was found."""
    if result.found is None:
        return []
    creds = _credentials(config)
    out = [f"----------------------------[ Profile {result.found.profile:2d} ]------"]
    out.append(f"{'Auth':<16}{result.found.dialect}")
    for keyword, attr in _HASHES[result.found.dialect]:
        value = getattr(creds, attr)
        if value is not None:
            out.append(f"{keyword:<16}{bytes(b ^ 0xFF for b in value).hex().upper()}")
    out.append("-" * 48)
    return out


def magic_main(config: Config) -> int:
    """`pycntlm -M URL`: run the detection, print cntlm's report; 0 when a profile works.
    Call it with the password still in `config` (after -I), before it is dropped."""
    from pycntlm.cli import run_loop  # cli imports this module; uvloop when installed

    if config.magic_url is None:
        raise ConfigError("-M needs a URL")
    url = config.magic_url
    results: list[MagicResult] = []

    def echo(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def main() -> None:
        results.append(await detect(config, url, echo=echo))

    run_loop(main)
    for line in (*profile_lines(config, results[0]), *results[0].verdict):
        echo(line)
    return 0 if results[0].found is not None else 1
