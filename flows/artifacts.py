"""Prefect artifacts people open in the UI: the plan of a provisioning run, the accuracy and
cost of a scoring run."""

from __future__ import annotations

from typing import Any

import polars as pl
from prefect.artifacts import create_markdown_artifact, create_table_artifact


def publish_plan(summary: Any, plan_desired: pl.DataFrame) -> None:
    """Markdown summary plus a per-client table of the plan's first window."""
    totals = summary.totals
    wanted = ", ".join(f"{n} {tier}" for tier, n in sorted(summary.desired.items())) or "none"
    actions = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.actions.items())) or "none"
    create_markdown_artifact(
        key="provision-plan",
        description=f"plan {summary.plan_id}",
        markdown="\n".join(
            [
                f"## Plan `{summary.plan_id}`" + (" (dry run)" if summary.dry_run else ""),
                "",
                "| | prewarm | reactive |",
                "|---|---|---|",
                f"| expected cost | {totals.get('expected_cost', 0):.4f} |"
                f" {totals.get('reactive_cost', 0):.4f} |",
                f"| expected cold starts | {totals.get('expected_cold_starts', 0):.1f} |"
                f" {totals.get('reactive_cold_starts', 0):.1f} |",
                "",
                f"Containers wanted now: **{wanted}** on `{summary.runtime or 'no runtime'}`;"
                f" actions applied: {actions}; unserved instance-windows: {summary.unserved}.",
                f"Forecast-only clients (untouched): {', '.join(summary.forecast_only) or 'none'}.",
            ]
        ),
    )
    first = plan_desired.filter(pl.col("tier") != "none")
    if first.height:
        first = first.filter(pl.col("window_start") == first.get_column("window_start").min())
    rows = (
        first.group_by("client_id", "tier", "mode")
        .agg(pl.col("count").sum(), pl.col("expected_cold_starts").sum().round(3))
        .sort("client_id", "tier")
        .to_dicts()
    )
    create_table_artifact(
        key="provision-pools",
        table=rows or [{"note": "nothing to warm"}],
        description="desired members per client and tier, first window",
    )


def publish_scores(summary: Any, rows: pl.DataFrame) -> None:
    """Markdown summary plus a per-client accuracy and cost table."""
    coverage = f"{summary.coverage:.0%}" if summary.coverage is not None else "-"
    drifted = "; ".join(f"{c}: {r}" for c, r in sorted(summary.drifted.items())) or "none"
    retrained = ", ".join(f"{c} (v{v})" for c, v in sorted(summary.retrained.items())) or "none"
    waiting = "; ".join(f"{c}: {w}" for c, w in sorted(summary.waiting.items())) or "none"
    create_markdown_artifact(
        key="score-summary",
        markdown="\n".join(
            [
                "## Scoring",
                "",
                f"{summary.buckets} buckets scored; 80% band coverage **{coverage}**.",
                "",
                "| | prewarm | reactive |",
                "|---|---|---|",
                f"| cold starts | {summary.cold_starts:.0f} | {summary.reactive_cold_starts:.0f} |",
                f"| cost | {summary.cost:.4f} | {summary.reactive_cost:.4f} |",
                "",
                f"Drift: {drifted}.",
                f"Retrained: {retrained}. Waiting: {waiting}.",
            ]
        ),
    )
    if rows.height == 0:
        return
    table = (
        rows.group_by("client_id")
        .agg(
            (pl.col("error").abs().sum() / pl.col("actual").abs().sum()).round(3).alias("wmape"),
            pl.col("covered").cast(pl.Float64).mean().round(3).alias("coverage_80"),
            pl.col("cold_starts").sum().alias("cold_starts"),
            pl.col("reactive_cold_starts").sum().alias("reactive_cold_starts"),
            pl.col("cost").sum().round(5).alias("cost"),
            pl.col("reactive_cost").sum().round(5).alias("reactive_cost"),
        )
        .sort("client_id")
    )
    create_table_artifact(
        key="score-accuracy",
        table=table.to_dicts(),
        description="accuracy, cold starts and cost vs reactive per client",
    )


def publish_cycle(summary: Any, hosts: pl.DataFrame | None = None) -> None:
    """Markdown of one cycle: its clock and watermark, lag, actions, drift and placement."""
    create_markdown_artifact(
        key="prewarm-cycle",
        description=f"cycle {summary.cycle_id}",
        markdown=cycle_markdown(summary, hosts),
    )


def cycle_markdown(summary: Any, hosts: pl.DataFrame | None = None) -> str:
    """The cycle artifact's text; `hosts` (`warehouse.inventory.read_host_placement`) adds a
    row per host: health (or why it is down), members by tier, capacity used of planned."""
    actions = ", ".join(f"{n} {kind}" for kind, n in summary.actions.items() if n) or "none"
    lag = f"{summary.lag_s:.0f} s" if summary.lag_s is not None else "-"
    late = f"{summary.late_s:.0f} s late" if summary.late_s else "on time"
    lines = [
        f"## Cycle `{summary.cycle_id}` ({late})",
        "",
        "| | |",
        "|---|---|",
        f"| feed | `{summary.feed}` |",
        f"| clock | {summary.clock} |",
        f"| watermark | {summary.watermark or '-'} |",
        f"| ingested rows | {summary.ingested_rows} |",
        f"| predicted | {summary.prediction_text()} |",
        f"| plan | `{summary.plan_id}`, first window {summary.first_window} |",
        f"| runtime actions | {actions} (failed {summary.failed_actions}, "
        f"drained {summary.drained}) |",
        f"| lag (pool applied after the watermark) | {lag} |",
        f"| churn (members created + released, last hour) | {summary.churn_per_hour} |",
        f"| duration | {summary.seconds:.1f} s |",
        f"| drifted | {len(summary.drifted)} (retrain eligible: {len(summary.retrain_eligible)}) |",
    ]
    if hosts is not None and hosts.height:
        lines += [
            "",
            "### Placement by host",
            "",
            "| host | health | active | shadow | cold | cpu used / planned"
            " | memory MiB used / planned |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in hosts.iter_rows(named=True):
            health = "up" if row["healthy"] is not False else f"**down**: {row['error']}"
            lines.append(
                f"| {row['host']} | {health} | {row['active']} | {row['shadow']} | {row['cold']}"
                f" | {row['cpu_used']:.2f} / {_or_dash(row['planned_cpu_cores'])}"
                f" | {row['memory_used_mb']:,.0f} / {_or_dash(row['planned_memory_mb'], ',.0f')} |"
            )
    return "\n".join(lines)


def _or_dash(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)
