"""Shared fixtures: real servers on loopback (verifying NTLM parent, origin, TLS origin)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import pytest
from proxyrun import USER
from servers.gitserver import git_http_server, git_https_server, git_root  # noqa: F401
from servers.squid import (  # noqa: F401
    squid_basic,
    squid_basic_session,
    squid_noauth,
    squid_noauth_session,
    squid_ntlm,
    squid_ntlm_session,
)
from servers.tls import TlsMaterial, server_tls  # noqa: F401

from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on uvloop, as pycntlm does in production; PYCNTLM_TEST_LOOP=asyncio runs them
    on the standard library's loop (CI runs the end-to-end tests on both)."""
    if os.environ.get("PYCNTLM_TEST_LOOP", "uvloop") == "asyncio":
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with Origin() as o:
        yield o


@pytest.fixture
async def tls_origin(server_tls: TlsMaterial) -> AsyncIterator[Origin]:  # noqa: F811
    async with Origin(ssl=server_tls.server_context) as o:
        yield o


@pytest.fixture
async def parent() -> AsyncIterator[NtlmParent]:
    async with NtlmParent([USER]) as p:
        yield p


@pytest.fixture
async def parent2() -> AsyncIterator[NtlmParent]:
    async with NtlmParent([USER]) as p:
        yield p
