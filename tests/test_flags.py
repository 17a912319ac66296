"""Flags / -F: the NTLM Type 1 carries exactly the given flag word, the Type 3 flags follow it,
cntlm's own flag words still authenticate against pyspnego's verifying acceptor, and words that
do not fit the Auth dialect are named (but sent: "for experts only")."""

from __future__ import annotations

import base64
import logging
import struct
from pathlib import Path

import pytest
from spnego._ntlm_raw.messages import Authenticate, Challenge, Negotiate, NegotiateFlags
from test_auth import LEVEL, SERVER_CHALLENGE, _acceptor, _b64, _creds, _handshake

from pycntlm.auth import (
    CNTLM_FLAGS,
    DIALECTS,
    NtlmHandshake,
    authenticate_flags,
    flag_names,
    flag_problems,
    negotiate_flags,
)
from pycntlm.cli import log_flags
from pycntlm.config import Config
from pycntlm.creds import Credentials

F = NegotiateFlags
CREDS = Credentials(
    "User", "corp-uk", "myhost", nt_hash=bytes(16), lm_hash=bytes(16), ntlmv2_hash=bytes(16)
)


def _type1_flags(value: str) -> int:
    raw = _b64(value)
    assert raw[:12] == b"NTLMSSP\x00\x01\x00\x00\x00"
    return int(struct.unpack_from("<I", raw, 12)[0])


@pytest.mark.parametrize(
    "word", [0xA208B205, 0xA208B207, 0xB207, 0xB205, 0xB206, 0x207, 0x1, 0xFFFFFFFF, 0x02000201]
)
def test_type1_carries_exactly_the_flag_word(word: int) -> None:
    hs = NtlmHandshake(CREDS, "NTLM", word)
    assert hs.type1_flags == word
    assert _type1_flags(hs.start()) == word


def test_default_is_unchanged_without_flags() -> None:
    for dialect in DIALECTS:
        assert _type1_flags(NtlmHandshake(CREDS, dialect).start()) == negotiate_flags(dialect)
        assert _type1_flags(NtlmHandshake(CREDS, dialect, None).start()) == negotiate_flags(dialect)


def test_names_go_in_only_with_the_supplied_bits() -> None:
    neg = Negotiate.unpack(_b64(NtlmHandshake(CREDS, "NTLMv2", 0xA208B205).start()))
    assert neg.flags == 0xA208B205
    assert (neg.domain_name, neg.workstation) == ("CORP-UK", "MYHOST")  # as cntlm's Type 1
    neg = Negotiate.unpack(_b64(NtlmHandshake(CREDS, "NTLMv2", 0xA2088205).start()))
    assert neg.flags == 0xA2088205
    assert (neg.domain_name, neg.workstation) == (None, None)
    only_domain = 0x1000 | F.ntlm | F.unicode
    neg = Negotiate.unpack(_b64(NtlmHandshake(CREDS, "NT", only_domain).start()))
    assert neg.flags == only_domain and (neg.domain_name, neg.workstation) == ("CORP-UK", None)


def test_names_outside_the_oem_code_page_are_left_out_not_an_error() -> None:
    greek = Credentials("u", "Τομέας", "Σταθμός", nt_hash=bytes(16))
    neg = Negotiate.unpack(_b64(NtlmHandshake(greek, "NT", 0xB205).start()))
    assert neg.flags == 0xB205
    assert (neg.domain_name, neg.workstation) == (None, None)


def test_type3_flags_follow_the_flag_word() -> None:
    challenge = int(F.unicode | F.ntlm | F.always_sign | F.key_128 | F.key_56 | F.target_info)
    # without sign bits in the word, the Type 3 does not claim them either
    assert not authenticate_flags("NTLMv2", challenge, F.unicode | F.ntlm) & F.always_sign
    assert authenticate_flags("NTLMv2", challenge) & F.always_sign
    # the word cannot change the NTLMv1 flavour the responses have (ESS exactly for NTLM2SR)
    assert not authenticate_flags("NT", challenge | F.extended_session_security, 0xA208B205) & (
        F.extended_session_security
    )
    assert authenticate_flags("NTLM2SR", challenge, 0xB205) & F.extended_session_security
    hs = NtlmHandshake(CREDS, "NT", int(F.unicode | F.ntlm))
    hs.start()
    type2 = Challenge(challenge, SERVER_CHALLENGE).pack()
    auth = Authenticate.unpack(_b64(hs.respond(["NTLM " + base64.b64encode(type2).decode()])))
    assert auth.flags == F.unicode | F.ntlm


@pytest.mark.parametrize("dialect", DIALECTS)
def test_cntlm_flag_words_authenticate(
    dialect: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """cntlm's own Type 1 flags for each dialect, given as Flags, verify at the strictest level
    that takes the dialect."""
    acceptor = _acceptor(monkeypatch, tmp_path, LEVEL[dialect])
    hs = NtlmHandshake(_creds(dialect), dialect, CNTLM_FLAGS[dialect])
    auth = _handshake(hs, acceptor)
    assert acceptor.complete and acceptor.client_principal == "CORP-UK\\testuser"
    assert auth.user_name == "testuser"


def test_flag_problems() -> None:
    for dialect in DIALECTS:
        assert flag_problems(CNTLM_FLAGS[dialect], dialect) == []
        assert flag_problems(negotiate_flags(dialect), dialect) == []
    assert any("NTLM flag" in p for p in flag_problems(0xA2088005, "NTLMv2"))
    assert any("encoding" in p for p in flag_problems(0x200, "NTLMv2"))
    assert any("NTLM2SR" in p for p in flag_problems(0xB205, "NTLM2SR"))
    assert any("NTLM2SR response" in p for p in flag_problems(0xA208B205, "NT"))


def test_flag_names() -> None:
    assert flag_names(0x207) == "0x00000207 (unicode, oem, request_target, ntlm)"
    assert flag_names(0) == "0x00000000 (none)"
    assert "extended_session_security" in flag_names(0xA208B205)


def _logged(cfg: Config) -> list[tuple[int, str]]:
    logger = logging.getLogger("pycntlm")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        log_flags(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    return [(r.levelno, r.getMessage()) for r in records]


def test_start_up_says_which_flags_are_sent_and_what_does_not_fit() -> None:
    assert _logged(Config()) == []
    lines = _logged(Config(flags=0xA208B205))
    assert lines == [
        (
            logging.INFO,
            f"using manual NTLM flags {flag_names(0xA208B205)} (Flags, for experts only)",
        )
    ]
    lines = _logged(Config(flags=0xA2088005, auth="NTLMv2"))
    assert lines[0][0] == logging.INFO and "0xa2088005" in lines[0][1]
    assert lines[1][0] == logging.WARNING and "no NTLM flag" in lines[1][1]
    assert "sent as given" in lines[1][1]
    lines = _logged(Config(flags=0xB205, magic_url="http://x/"))
    assert lines == [
        (logging.WARNING, "Flags is ignored by -M: each profile uses its own flags, as in cntlm")
    ]
