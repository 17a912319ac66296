"""Front ends other than the HTTP proxy: Tunnel (-L) and SOCKS5 (-O) listeners.

Owns: binding those listeners and serving their connections through session.open_tunnel.
Must not: authenticate upstream itself (session.py does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from pycntlm.context import Context

Spawn = Callable[[Coroutine[Any, Any, None]], None]


async def start_frontends(ctx: Context, spawn: Spawn) -> list[asyncio.Server]:
    """Start every Tunnel and SOCKS5Proxy listener of ctx.config; connections are served by
    coroutines handed to `spawn` (tracked for graceful shutdown). None are implemented yet."""
    return []
