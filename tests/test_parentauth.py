"""parentauth (sans-IO): reading a parent's offer, choosing the scheme, forgetting on reload;
and the Basic value kept in Credentials."""

from __future__ import annotations

import base64

import pytest

from pycntlm import creds
from pycntlm.config import Config, HostPort
from pycntlm.log import Redactor
from pycntlm.parentauth import ParentAuth, choose, has_ntlm_challenge, parent_auth, schemes
from pycntlm.pool import Pool

P = HostPort("proxy.corp.example", 8080)


def never() -> bool:
    raise AssertionError("kerberos_ready() asked when it cannot matter")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (['Basic realm="corp"'], {"basic"}),
        (["Negotiate", "NTLM", 'Basic realm="corp"'], {"negotiate", "ntlm", "basic"}),
        (['NTLM, Basic realm="a, b", Negotiate'], {"ntlm", "basic", "negotiate"}),
        (['Basic realm="x", charset="UTF-8"'], {"basic"}),
        (["NTLM TlRMTVNTUAACAAAA"], {"ntlm"}),
        ([""], set()),
        ([], set()),
    ],
)
def test_schemes_reads_every_challenge_and_skips_auth_params(
    values: list[str], expected: set[str]
) -> None:
    assert schemes(values) == expected


def test_ntlm_challenge_needs_a_token() -> None:
    assert has_ntlm_challenge(["NTLM TlRMTVNTUAACAAAA"])
    assert not has_ntlm_challenge(["NTLM", 'Basic realm="x"'])
    assert not has_ntlm_challenge(['Basic realm="x"'])


def test_basic_only_means_no_connection_scheme() -> None:
    known = ParentAuth()
    assert not known.basic_only
    known.learn(['Basic realm="x"'])
    assert known.basic_only
    known.learn(["NTLM", 'Basic realm="x"'])
    assert not known.basic_only
    known.learn(["Negotiate", 'Basic realm="x"'])
    assert not known.basic_only


def test_choose() -> None:
    ntlm = Config(auth="NTLMv2")
    unknown, negotiate, ntlm_only, basic = ParentAuth(), ParentAuth(), ParentAuth(), ParentAuth()
    negotiate.learn(["Negotiate", "NTLM"])
    ntlm_only.learn(["NTLM"])
    basic.learn(['Basic realm="x"'])
    assert choose(ntlm, unknown, lambda: True) == "probe"
    assert choose(ntlm, negotiate, lambda: True) == "kerberos"
    assert choose(ntlm, unknown, lambda: False) == "ntlm"
    assert choose(ntlm, negotiate, lambda: False) == "ntlm"
    assert choose(ntlm, ntlm_only, never) == "ntlm"
    assert choose(ntlm, basic, never) == "basic"
    assert choose(Config(auth="GSS"), basic, never) == "gss"
    assert choose(Config(auth="NTLMv2", auto_kerberos=False), negotiate, never) == "ntlm"
    assert choose(Config(auth="NTLM", ntlm_to_basic=True), negotiate, never) == "ntlm"


def test_what_was_learned_lives_as_long_as_the_generation_pool() -> None:
    generations: list[int] = []
    pool = Pool(4, 30.0, lambda: 0.0)
    known = parent_auth(pool, P, lambda: generations.append(1))
    known.learn(['Basic realm="x"'])
    assert parent_auth(pool, P, lambda: generations.append(2)) is known
    assert generations == [1]
    # a reload builds a new Context with a new pool: nothing is remembered
    again = parent_auth(Pool(4, 30.0, lambda: 0.0), P, lambda: generations.append(3))
    assert again.offer is None
    assert generations == [1, 3]


@pytest.mark.parametrize(
    ("user", "domain", "login"),
    [("testuser", "corp-uk", "corp-uk\\testuser"), ("testuser", "", "testuser")],
)
def test_basic_value_is_domain_backslash_user(user: str, domain: str, login: str) -> None:
    c = creds.from_password(user, domain, "WS", "pässword")
    assert c.basic is not None
    scheme, _, token = c.basic.partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == f"{login}:pässword"
    assert "pässword" not in repr(c) and token not in repr(c)


def test_hash_only_credentials_have_no_basic_value() -> None:
    cfg = Config(username="u", domain="d", pass_nt="77B9081511704EE852F94227CF48A793")
    assert creds.from_config(cfg, "WS").basic is None


def test_the_log_redactor_hides_basic_values() -> None:
    # log.py is the second line of defence; pycntlm never logs the header in the first place
    value = creds.basic_value("testuser", "corp-uk", "password")
    redactor = Redactor()
    for line in (f"Proxy-Authorization: {value}", f"sent {value} upstream", f"('x', '{value}')"):
        assert value.split()[1] not in redactor.scrub(line)
