"""The PAC decision cache on /metrics: hits, misses and entries, only when a PAC is configured,
counted through a real pycntlm on loopback (a PAC file from a path, the origin reached DIRECT)."""

from __future__ import annotations

import socket
from pathlib import Path

from proxyrun import conf, get, running_proxy

from pycntlm.demo.origin import Origin
from pycntlm.metrics import render


def pac_line(tmp_path: Path, body: str) -> str:
    pac = tmp_path / "proxy.pac"
    pac.write_text("function FindProxyForURL(url, host) {\n" + body + "\n}\n")
    return f"Pac {pac}"


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_count_pac_cache_hits_misses_and_entries(
    tmp_path: Path, origin: Origin
) -> None:
    text = conf(extra=pac_line(tmp_path, 'return "DIRECT";'))
    async with running_proxy(text, tmp_path) as proxy:
        for path in ("/", "/bytes/3", "/bytes/4?c=1"):
            assert (await get(proxy.port, origin.url(path))).status == 200
        page = render(proxy.ctx)
    assert "pycntlm_pac_cache_hits_total 2\n" in page
    assert "pycntlm_pac_cache_misses_total 1\n" in page
    assert "pycntlm_pac_cache_entries 1\n" in page
    assert "# TYPE pycntlm_pac_cache_hits_total counter" in page
    assert "# TYPE pycntlm_pac_cache_entries gauge" in page
    assert "127.0.0.1" not in page  # no hosts in labels


async def test_metrics_show_zeros_while_the_pac_file_is_not_loaded(tmp_path: Path) -> None:
    text = conf(extra=f"Pac http://127.0.0.1:{dead_port()}/proxy.pac")
    async with running_proxy(text, tmp_path) as proxy:
        assert proxy.ctx.pac is not None and proxy.ctx.pac.engine is None
        page = render(proxy.ctx)
    for line in ("hits_total 0", "misses_total 0", "entries 0"):
        assert f"pycntlm_pac_cache_{line}\n" in page


async def test_metrics_have_no_pac_lines_without_a_pac(tmp_path: Path) -> None:
    async with running_proxy(conf(f"127.0.0.1:{dead_port()}"), tmp_path) as proxy:
        page = render(proxy.ctx)
    assert "pycntlm_info" in page and "pycntlm_pac_" not in page
