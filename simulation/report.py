"""The replay's report: its table as text cells and its plot (idle memory against cold starts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulation.policies import PREWARM_PREFIX

TABLE_HEADER = [
    "policy",
    "invocations",
    "cold starts",
    "cold/inv",
    "p75 fn cold %",
    "zero-cold fns",
    "seen fns cold",
    "idle MB-min",
    "idle vs KA10",
]


def render_table(result: dict[str, Any]) -> list[list[str]]:
    """The replay table as text cells, the header row first."""
    rows = [list(TABLE_HEADER)]
    for name, m in result["policies"].items():
        rows.append(
            [
                name,
                f"{m['total_invocations']:,.0f}",
                f"{m['total_cold_starts']:,.0f}",
                f"{m['cold_start_per_invocation']:.5f}",
                f"{m['p75_function_cold_pct']:.2f}",
                f"{m['zero_cold_share']:.1%}",
                f"{m['seen_cold_functions']}",
                f"{m['idle_mb_minutes']:,.0f}",
                f"{m['idle_vs_fixed10']:.3f}",
            ]
        )
    return rows


def plot_replay(result: dict[str, Any], path: Path) -> None:
    """PNG: idle memory (vs keep-alive 10) against p75 function cold-start %, one label each.

    prewarm@R points are joined into a curve in ratio order; baselines are labelled squares.
    A second panel puts the same idle against cold starts per invocation (log scale, so
    zero-cold policies such as the oracle are left out of it), where the curve still moves
    after its p75 has reached zero.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 5), dpi=100)
    left, right = figure.subplots(1, 2)
    _draw_panel(left, result["policies"], "p75_function_cold_pct")
    left.set_xlabel("75th percentile of per-function cold starts per invocation (%)")
    _draw_panel(right, result["policies"], "cold_start_per_invocation")
    right.set_xscale("log")
    right.set_xlabel("cold starts per invocation (all functions, log scale)")
    settings = result.get("settings", {})
    figure.suptitle(
        f"Trace replay after {settings.get('warmup', '?')} min of history; prewarm retrained "
        f"every {settings.get('cadence_minutes', '?')} min",
        fontsize=11,
    )
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def _draw_panel(axes: Any, policies: dict[str, dict[str, float]], metric: str) -> None:
    """One panel: idle_vs_fixed10 (y) against `metric` (x) for every policy it can show."""
    log_scale = metric == "cold_start_per_invocation"
    shown = {n: m for n, m in policies.items() if not (log_scale and not m.get(metric, 0) > 0)}
    curve = [(n, m) for n, m in shown.items() if n.startswith(PREWARM_PREFIX)]
    if curve:
        x = [m[metric] for _, m in curve]
        y = [m["idle_vs_fixed10"] for _, m in curve]
        axes.plot(x, y, "-o", color="tab:blue", markersize=4, label="prewarm@R (R labelled)")
        for (name, _), xi, yi in zip(curve, x, y, strict=True):
            axes.annotate(
                name.removeprefix(PREWARM_PREFIX),
                (xi, yi),
                fontsize=7,
                color="tab:blue",
                xytext=(-4, 2),
                textcoords="offset points",
                ha="right",
            )
    for name, m in shown.items():
        if name.startswith(PREWARM_PREFIX):
            continue
        point = (m[metric], m["idle_vs_fixed10"])
        axes.plot(*point, "s", color="tab:red" if name == "hybrid_histogram" else "dimgray")
        axes.annotate(name, point, fontsize=8, xytext=(6, -3), textcoords="offset points")
    axes.set_ylabel("idle memory, relative to keep-alive 10 min")
    axes.margins(x=0.15)
    axes.grid(alpha=0.3)
    if curve:
        axes.legend(loc="upper right", fontsize=8)
