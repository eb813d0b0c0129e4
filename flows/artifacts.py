"""Prefect artifacts people open in the UI: the plan of a provisioning run, the accuracy and
cost of a reconciliation run."""

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
        key="provision-pools", table=rows or [{"note": "nothing to warm"}],
        description="desired members per client and tier, first window",
    )  # fmt: skip


def publish_reconciliation(summary: Any, rows: pl.DataFrame) -> None:
    """Markdown summary plus a per-client accuracy and cost table."""
    coverage = f"{summary.coverage:.0%}" if summary.coverage is not None else "-"
    drifted = "; ".join(f"{c}: {r}" for c, r in sorted(summary.drifted.items())) or "none"
    create_markdown_artifact(
        key="reconcile-summary",
        markdown="\n".join(
            [
                "## Reconciliation",
                "",
                f"{summary.buckets} buckets reconciled; 80% band coverage **{coverage}**.",
                "",
                "| | prewarm | reactive |",
                "|---|---|---|",
                f"| cold starts | {summary.cold_starts:.0f} | {summary.reactive_cold_starts:.0f} |",
                f"| cost | {summary.cost:.4f} | {summary.reactive_cost:.4f} |",
                "",
                f"Pool corrections: {summary.actions or 'none'}; scaled up at once: "
                f"{summary.scaled_up or 'none'}.",
                f"Drift: {drifted}. Retrained: {', '.join(sorted(summary.retrained)) or 'none'}.",
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
        key="reconcile-accuracy", table=table.to_dicts(),
        description="accuracy, cold starts and cost vs reactive per client",
    )  # fmt: skip
