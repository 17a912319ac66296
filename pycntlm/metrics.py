"""The optional status endpoint: Prometheus-format counters and gauges, and a health check.

Owns: rendering Context state as Prometheus text, and the small aiohttp server that serves it
(`StatusListen`, off by default, loopback unless told otherwise). Must not: expose anything
secret or personal: no credentials, hashes, tokens, user names or client addresses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web

from pycntlm import __version__
from pycntlm.context import Context


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(ctx: Context) -> str:
    """Prometheus text exposition (version 0.0.4) of the running state."""
    s = ctx.stats
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Sequence[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{labels} {value:g}")

    metric("pycntlm_info", "gauge", "pycntlm version.", [(f'{{version="{__version__}"}}', 1)])
    by = sorted(s.by_status.items())
    metric(
        "pycntlm_responses_total",
        "counter",
        "Requests answered, by status code.",
        [(f'{{status="{code}"}}', n) for code, n in by],
    )
    metric(
        "pycntlm_requests_total",
        "counter",
        "Requests, by route (parent, direct, or - when refused before routing).",
        [(f'{{route="{_esc(r)}"}}', n) for r, n in sorted(s.by_route.items())],
    )
    metric("pycntlm_clients_active", "gauge", "Open client connections.", [("", s.clients_active)])
    metric("pycntlm_tunnels_active", "gauge", "Open CONNECT tunnels.", [("", s.tunnels_active)])
    metric(
        "pycntlm_bytes_total",
        "counter",
        "Body and tunnel bytes relayed, by direction.",
        [
            ('{direction="to_clients"}', s.bytes_to_clients),
            ('{direction="from_clients"}', s.bytes_from_clients),
        ],
    )
    metric("pycntlm_handshakes_total", "counter", "NTLM handshakes started.", [("", s.handshakes)])
    metric(
        "pycntlm_auth_rejections_total",
        "counter",
        "Times a parent rejected pycntlm's credentials.",
        [("", s.auth_rejections)],
    )
    locked = ctx.guard.state != "ok"
    metric("pycntlm_auth_locked_out", "gauge", "1 while credentials are not used.", [("", locked)])
    metric(
        "pycntlm_auth_lockout_remaining_seconds",
        "gauge",
        "Seconds until a locked-out credential is tried again.",
        [("", ctx.guard.remaining())],
    )
    health = ctx.upstreams.health() if ctx.config.proxies else []
    metric(
        "pycntlm_parent_up",
        "gauge",
        "1 when a parent proxy is considered up.",
        [(f'{{parent="{_esc(str(p))}"}}', up) for p, up, _ in health],
    )
    metric(
        "pycntlm_parent_current",
        "gauge",
        "1 for the parent new connections go to.",
        [(f'{{parent="{_esc(str(p))}"}}', p == ctx.upstreams.current) for p, _, _ in health],
    )
    metric(
        "pycntlm_failovers_total", "counter", "Parent failovers.", [("", ctx.upstreams.failovers)]
    )
    idle = [(f'{{parent="{_esc(str(p))}"}}', ctx.pool.idle_count_for(str(p))) for p, _, _ in health]
    metric("pycntlm_pool_idle_connections", "gauge", "Idle authenticated connections.", idle)
    metric(
        "pycntlm_pool_reused_total",
        "counter",
        "Pooled connections reused.",
        [("", ctx.pool.reused)],
    )
    spares = "Pre-authenticated spare connections (PoolSpare)"
    metric("pycntlm_spares_made_total", "counter", f"{spares} made.", [("", ctx.pool.spares_made)])
    metric("pycntlm_spares_used_total", "counter", f"{spares} used.", [("", ctx.pool.spares_used)])
    if ctx.pac is not None:  # counts restart when the PAC file is compiled again
        pac = ctx.pac.engine.cache_info() if ctx.pac.engine is not None else {}
        metric(
            "pycntlm_pac_cache_hits_total",
            "counter",
            "PAC decisions answered from the decision cache.",
            [("", pac.get("decision_hits", 0))],
        )
        metric(
            "pycntlm_pac_cache_misses_total",
            "counter",
            "PAC decisions not in the cache (FindProxyForURL was run).",
            [("", pac.get("decision_misses", 0))],
        )
        metric(
            "pycntlm_pac_cache_entries",
            "gauge",
            "PAC decisions (and failures) in the cache.",
            [("", pac.get("decisions", 0))],
        )
    return "\n".join(out) + "\n"


def make_app(get_ctx: Callable[[], Context]) -> web.Application:
    """`get_ctx` returns the current Context (it changes on reload)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=render(get_ctx()), content_type="text/plain", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        ctx = get_ctx()
        ok = ctx.guard.state == "ok" and (
            not ctx.config.proxies or any(up for _, up, _ in ctx.upstreams.health())
        )
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "degraded\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def start(get_ctx: Callable[[], Context], host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(get_ctx), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
