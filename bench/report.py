"""Medians, ratios, the printed table and the JSON file.

Owns: turning per-repetition metrics into medians and ratios (to direct, or to cntlm where a
metric has no direct value) and rendering them. Must not: measure anything.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

Runs = list[dict[str, Any]]  # {"rep", "figure", "candidate", "metrics"}

# (label, metric key, format, higher is better)
ROWS: list[tuple[str, str, str, bool]] = [
    ("CONNECT 1 GiB, MB/s", "tunnel_1g_mbps", "{:.0f}", True),
    ("CONNECT 1 GiB, MB per proxy CPU-s", "tunnel_1g_mb_per_proxy_cpu_s", "{:.0f}", True),
    ("1 KiB GET req/s, 1 conn", "rps_1k_c1_rps", "{:.0f}", True),
    ("1 KiB GET req/s, 50 conns", "rps_1k_c50_rps", "{:.0f}", True),
    ("  proxy CPU us/req (50 conns)", "rps_1k_c50_proxy_cpu_us_per_req", "{:.0f}", False),
    ("  squid CPU us/req (50 conns)", "rps_1k_c50_squid_cpu_us_per_req", "{:.0f}", False),
    ("1 MiB GET MB/s, 1 conn", "get_1m_c1_mbps", "{:.0f}", True),
    ("latency reused conn p50 ms", "lat_reused_p50_ms", "{:.2f}", False),
    ("latency reused conn p99 ms", "lat_reused_p99_ms", "{:.2f}", False),
    ("latency fresh conn p50 ms", "lat_fresh_p50_ms", "{:.2f}", False),
    ("latency fresh conn p99 ms", "lat_fresh_p99_ms", "{:.2f}", False),
    ("burst 20 CONNECTs, ms", "burst20_ms", "{:.0f}", False),
    ("burst 20 CONNECTs after 1 tunnel, ms", "burst20_cold_ms", "{:.1f}", False),
    ("burst 3 CONNECTs after 1 tunnel, ms", "burst3_cold_ms", "{:.1f}", False),
    ("N tunnels: opened", "held_opened", "{:.0f}", True),
    ("N tunnels: setup s", "held_setup_s", "{:.2f}", False),
    ("RSS idle at start MiB", "idle_rss_mib", "{:.1f}", False),
    ("RSS with N tunnels MiB", "held_rss_mib", "{:.1f}", False),
    ("RSS after they close MiB", "after_rss_mib", "{:.1f}", False),
    ("proxy crashes/restarts", "crashes", "{:.0f}", False),
]


def medians(runs: Runs, candidates: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, list[float]]] = {c: {} for c in candidates}
    for run in runs:
        for key, value in run["metrics"].items():
            if isinstance(value, int | float):
                out[run["candidate"]].setdefault(key, []).append(float(value))
    return {c: {k: _median(v) for k, v in metrics.items()} for c, metrics in out.items()}


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0 or math.isinf(b):
        return None
    return a / b


def table(med: dict[str, dict[str, float]], candidates: list[str], reps: int) -> str:
    """Rows of `value (x ratio)`; ratio to direct, or to cntlm (marked c) if direct lacks it."""
    width = 13
    head = f"{'figure (median of ' + str(reps) + ')':34}" + "".join(
        f"{c:>{width}}" for c in candidates
    )
    show_pc = "pycntlm" in candidates and "cntlm" in candidates
    if show_pc:
        head += f"{'pycntlm/cntlm':>15}"
    lines = [head, "-" * len(head)]
    for label, key, fmt, _higher in ROWS:
        base_name = "direct" if _has(med, "direct", key) else "cntlm"
        base = med.get(base_name, {}).get(key)
        cells = []
        for c in candidates:
            v = med.get(c, {}).get(key)
            if v is None or math.isnan(v):
                cells.append(f"{'-':>{width}}")
                continue
            text = fmt.format(v) if not math.isinf(v) else "fail"
            r = ratio(v, base) if c != base_name else None
            if r is not None:
                text += f" {r:.2f}{'c' if base_name == 'cntlm' else 'x'}"
            cells.append(f"{text:>{width}}")
        line = f"{label:34}" + "".join(cells)
        if show_pc:
            r = ratio(med.get("pycntlm", {}).get(key), med.get("cntlm", {}).get(key))
            line += f"{(f'{r:.2f}' if r is not None else '-'):>15}"
        lines.append(line)
    lines.append(
        "ratios: 'x' = candidate/direct, 'c' = candidate/cntlm (no direct value); "
        "higher is better for rates, lower for ms/us/MiB"
    )
    return "\n".join(lines)


def _has(med: dict[str, dict[str, float]], name: str, key: str) -> bool:
    v = med.get(name, {}).get(key)
    return v is not None and not math.isnan(v)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Strict JSON: NaN (not measured) becomes null, infinity (failed) becomes "fail"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(payload), indent=1, allow_nan=False) + "\n")


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else ("fail" if math.isinf(value) else value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
