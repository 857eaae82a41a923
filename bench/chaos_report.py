"""The chaos benchmark's markdown report, computed from its raw results (bench/chaos.py).

Usage: python bench/chaos_report.py bench/out/chaos-<time>.json    (re-print a past run)
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

KINDS = ("minilm", "sim-embed", "static")
RSS_TARGET_KB = 1024 * 1024
P99_TARGET_RATIO = 2.0


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def summarise(rows: list[list[Any]], kind: str | None) -> dict[str, Any]:
    """Counts and latency percentiles (of 2xx answers, in ms) of one kind (None: all)."""
    mine = [r for r in rows if kind is None or r[0] == kind]
    ok = [r[1] * 1000 for r in mine if 200 <= r[2] < 300]
    shed = sum(1 for r in mine if r[2] in (429, 503) and r[4])
    n = len(mine)
    return {
        "n": n,
        "ok": len(ok),
        "shed": shed,
        "failed": n - len(ok) - shed,
        "success": (len(ok) + shed) / n if n else float("nan"),
        "p50": pct(ok, 50),
        "p99": pct(ok, 99),
    }


def p99_ratio(calm: dict[str, Any], chaos: dict[str, Any]) -> float:
    """Chaos p99 over calm p99; infinite when chaos answered none of them with a 2xx."""
    if not chaos["ok"]:
        return math.inf
    return float(chaos["p99"] / calm["p99"]) if calm["ok"] else math.nan


def errors_5xx(phase: dict[str, Any]) -> Counter[str]:
    total: Counter[str] = Counter(phase["normal"]["errors_5xx"])
    for family in phase["abuse"].values():
        total.update(family["errors_5xx"])
    return total


def failures(rows: list[list[Any]]) -> Counter[str]:
    """Normal requests that did not succeed, by kind, status and reason."""
    return Counter(
        f"{r[0]} {r[2] if r[2] >= 0 else 'no answer'} {r[3]}"
        for r in rows
        if not (200 <= r[2] < 300 or (r[2] in (429, 503) and r[4]))
    )


def report(res: dict[str, Any]) -> str:
    calm_rows, chaos_rows = res["calm"]["normal"]["rows"], res["chaos"]["normal"]["rows"]
    out = [
        f"## Chaos benchmark: {res['chaos']['seconds']:.0f} s chaos, "
        f"{res['calm']['seconds']:.0f} s calm",
        "",
        "| normal clients | calm n | calm success | calm p50 / p99 ms "
        "| chaos n | chaos success | chaos p50 / p99 ms | p99 ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for kind in (*KINDS, None):
        c, x = summarise(calm_rows, kind), summarise(chaos_rows, kind)
        ratio = p99_ratio(c, x)
        if kind is not None:
            ratios.append(ratio)
        out.append(
            f"| {kind or 'all'} | {c['n']} | {c['success']:.2%} | {c['p50']:.1f} / {c['p99']:.1f} "
            f"| {x['n']} | {x['success']:.2%} (shed {x['shed']}) "
            f"| {x['p50']:.1f} / {x['p99']:.1f} | {ratio:.2f}x |"
        )
    peak_kb = max(
        res[p]["peak_kb"].get(k, 0) for p in ("calm", "chaos") for k in ("VmRSS", "VmHWM")
    )
    e5 = errors_5xx(res["chaos"]) + errors_5xx(res["calm"])
    n500 = sum(n for k, n in e5.items() if k.startswith("500 "))
    unanswered = summarise(chaos_rows, None)["failed"]
    worst = max((r for r in ratios if not math.isnan(r)), default=math.nan)

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    out += [
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| every normal request answered (2xx, or 429/503 with Retry-After) "
        f"| {unanswered} not | {met(unanswered == 0)} |",
        f"| normal p99 within {P99_TARGET_RATIO:g}x calm (worst kind) "
        f"| {worst:.2f}x | {met(worst <= P99_TARGET_RATIO)} |",
        f"| server peak RSS under 1 GB | {peak_kb / 1024:.0f} MB "
        f"| {met(peak_kb < RSS_TARGET_KB)} |",
        f"| zero 500s (all clients, both phases) | {n500} | {met(n500 == 0)} |",
        f"| server alive after chaos, /healthz | {res['chaos']['server_alive']}, "
        f"{res['chaos']['healthz_after']} | {met(res['chaos']['healthz_after'] == 200)} |",
        f"| SIGTERM to exit | {res['stop']['exit_s']} s, code {res['stop']['exit_code']} | |",
        "",
        "| 5xx seen by all clients (status reason) | count |",
        "|---|---|",
        *(f"| {k} | {n} |" for k, n in e5.most_common()),
    ]
    if not e5:
        out.append("| (none) | 0 |")
    fails = failures(chaos_rows)
    if fails:
        out += ["", "| normal requests that failed under chaos | count |", "|---|---|"]
        out += [f"| {k} | {n} |" for k, n in fails.most_common(15)]
    out += ["", "| abusive clients | outcomes (status or what happened: count) |", "|---|---|"]
    for family, t in res["chaos"]["abuse"].items():
        top = Counter(t["outcomes"]).most_common(40)
        out.append(f"| {family} | {', '.join(f'{k}: {n}' for k, n in top)} |")
    out.append(f"\nserver log: {res['server_log_bytes']} bytes ({res['server_log']})")
    return "\n".join(out)


if __name__ == "__main__":
    print(report(json.loads(Path(sys.argv[1]).read_text())))
