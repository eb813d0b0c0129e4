"""`prewarm train`, `predict`, `backtest` and `retrain`: the forecasters and their scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from core.errors import PrewarmError
from flows.cli.common import console, fmt, load_settings
from flows.settings import Settings


def train(
    clients: Annotated[
        list[str] | None,
        typer.Option("--clients", "-c", help="Only these client ids (repeatable)."),
    ] = None,
) -> None:
    """Fit, score and register one forecaster per client in MLflow (forecaster-<client_id>).

    A new version becomes `challenger`; it is promoted to `champion` only when its holdout
    wMAPE beats both the current champion on the same window and seasonal naive.
    """
    settings = load_settings(runs_flows=True)
    from flows.progress import progress_bars
    from flows.train import train_flow

    with progress_bars():
        summary = train_flow(settings)(client_ids=clients or None, trigger="manual")
    table = Table("client", "version", "alias", "window wMAPE", "baseline", "why")
    for registration in sorted(summary.registrations, key=lambda r: r.client_id):
        score = summary.scores.get(registration.client_id)
        table.add_row(
            registration.client_id,
            registration.version,
            "champion" if registration.promoted else "challenger",
            f"{score.wmape:.3f}" if score else "-",
            f"{score.baseline_wmape:.3f}" if score and score.baseline_wmape is not None else "-",
            registration.reason,
        )
    console.print(table)
    console.print(
        f"Registered {len(summary.registrations)} forecasters ({summary.promoted} promoted, "
        f"{len(summary.fallbacks)} on the global model, {len(summary.failures)} failed) in "
        f"{summary.wall_seconds:.1f} s; MLflow {summary.mlflow_seconds:.1f} s. "
        f"Review them in the MLflow UI ({review_url(settings)})."
    )
    for client_id, why in sorted(summary.failures.items()):
        console.print(f"  [red]failed[/] {client_id}: {why}")


def predict(
    clients: Annotated[
        list[str] | None,
        typer.Option("--clients", "-c", help="Only these client ids (repeatable)."),
    ] = None,
) -> None:
    """Refresh forecasts and predicted profiles from the latest usage (no retraining)."""
    load_settings(runs_flows=True)
    from flows.predict import predict_profiles
    from flows.progress import progress_bars

    with progress_bars():
        summary = predict_profiles(client_ids=clients or None)
    console.print(
        f"Predicted {summary.clients} clients: {summary.forecasts:,} forecast rows and "
        f"{summary.profiles:,} profile windows in {summary.seconds:.1f} s."
    )
    if summary.without_model:
        console.print(
            f"[yellow]{len(summary.without_model)} clients have no model yet[/]; "
            "run `prewarm train`."
        )
    console.print(
        'See them: prewarm sql "select client_id, window_start, window_end, concurrency_p90, '
        'confidence from profiles order by window_start limit 20"'
    )


def backtest(
    csv: Annotated[
        Path | None, typer.Option(help="A bare multi-metric CSV (one client, no timestamps).")
    ] = None,
    from_warehouse: Annotated[
        bool, typer.Option("--from-warehouse", help="Backtest every warehouse client.")
    ] = False,
    freq: Annotated[str, typer.Option(help="Step between CSV rows, e.g. 5min.")] = "5min",
    horizon_steps: Annotated[
        int,
        typer.Option(
            "--horizon-steps",
            "--horizon",
            min=1,
            help="Steps (buckets) forecast from each origin; --horizon is the older name.",
        ),
    ] = 12,
    test_days: Annotated[float, typer.Option(min=0.1, help="Days of origins at the end.")] = 7.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    """Rolling-origin backtest of LightGBM against naive and seasonal-naive baselines.

    Origins every HORIZON steps across the last TEST_DAYS days; each forecasts the next
    HORIZON steps from data before the origin. Reports p50 wMAPE, pinball loss and the
    coverage of the 80% interval.
    """
    settings = load_settings()
    from flows.settings import parse_freq
    from models.backtest import backtest_clients, backtest_series, read_bare_csv

    if (csv is None) == (not from_warehouse):
        raise PrewarmError("Give exactly one of --csv FILE or --from-warehouse.")
    try:
        freq_seconds = parse_freq(freq)
    except ValueError as error:
        raise PrewarmError(str(error)) from None
    if csv is not None:
        if not csv.exists():
            raise PrewarmError(f"No such file: {csv}")
        try:
            series = read_bare_csv(csv, freq_seconds)
            result = backtest_series(
                series, freq_seconds, horizon_steps=horizon_steps, test_days=test_days
            )
        except ValueError as error:
            raise PrewarmError(f"Backtest of {csv} failed: {error}") from None
        table = Table(
            "column",
            "lightgbm wMAPE",
            "coverage 80",
            "pinball",
            "naive",
            "seasonal day",
            "seasonal week",
            title=f"backtest {csv.name}",
        )
        for column, scores in result["metrics"].items():
            table.add_row(
                column,
                fmt(scores["lightgbm"]["wmape"]),
                fmt(scores["lightgbm"]["coverage_80"]),
                fmt(scores["lightgbm"]["pinball"]),
                fmt(scores["naive"]["wmape"]),
                fmt(scores.get("seasonal_naive_day", {}).get("wmape")),
                fmt(scores.get("seasonal_naive_week", {}).get("wmape")),
            )
        console.print(table)
        for note in result.get("notes", []):
            console.print(f"note: {note}")
        console.print(f"runtime {result['runtime_s']:.1f} s")
        if json_out:
            json_out.write_text(json.dumps(result, indent=2) + "\n")
            console.print(f"wrote {json_out}")
        return
    from warehouse.clients import read_clients
    from warehouse.usage import read_calendar, read_recent_usage

    usage = read_recent_usage(settings.warehouse_path, settings.train_history_days)
    frame = backtest_clients(
        usage,
        read_clients(settings.warehouse_path),
        read_calendar(settings.warehouse_path),
        None,
        horizon_steps,
        test_days,
    )
    table = Table(*frame.columns, title="backtest of warehouse clients")
    for row in frame.iter_rows():
        table.add_row(*(fmt(v) if isinstance(v, float) else str(v) for v in row))
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps(frame.to_dicts(), indent=2, default=str) + "\n")
        console.print(f"wrote {json_out}")


def profile(
    client_id: Annotated[str, typer.Argument(help="The client id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print it as GET /v1/clients/{id}/profile returns it.")
    ] = False,
) -> None:
    """A client's predicted profile: its demand windows (when, for how long, how much, how
    sure, what its declared services need) and a chart of its concurrency forecast."""
    settings = load_settings()
    from api.composite import client_composite
    from api.routes import profile_response
    from flows.profile_view import chart_lines, read_profile_view

    view = read_profile_view(settings.warehouse_path, client_id)
    rows = view.windows
    if not rows and view.series.height == 0:
        raise PrewarmError(
            f"No prediction for {client_id!r} yet: run `prewarm predict` (or let a cycle run)."
        )
    try:
        composite = client_composite(
            settings.warehouse_path, client_id, allowed_images=settings.allowed_image_list
        )
    except PrewarmError:  # a schema problem is `prewarm schema show`'s to explain
        composite = {}
    document = profile_response(client_id, rows, composite.get("services") or {})
    if as_json:
        console.print_json(document.model_dump_json())
        return
    console.print(
        f"{client_id}: predicted at {document.generated_at or '-'}, "
        f"{len(document.windows)} demand window(s)"
    )
    table = Table(
        "start",
        "end",
        "minutes",
        "concurrency p50/p90",
        "cpu p90 (conf.)",
        "memory p90 (conf.)",
        "P(active)",
        "confidence",
        "services",
    )
    for w in document.windows:
        concurrency, cpu, memory = (
            w.peaks.get(m) for m in ("concurrency", "cpu_cores", "memory_mb")
        )
        needs = ", ".join(
            f"{name} {need.size_mb:.0f} MB/{need.connections} conn"
            for name, need in w.services.items()
        )
        table.add_row(
            f"{w.start:%m-%d %H:%M}",
            f"{w.end:%m-%d %H:%M}",
            f"{w.duration_minutes:.0f}",
            f"{fmt(concurrency.p50 if concurrency else None)} / "
            f"{fmt(concurrency.p90 if concurrency else None)}",
            _with_confidence(cpu),
            _with_confidence(memory),
            fmt(w.p_active),
            f"{w.confidence:.2f}",
            needs or "-",
        )
    console.print(table)
    spans = [(w.start.replace(tzinfo=None), w.end.replace(tzinfo=None)) for w in document.windows]
    lines = chart_lines(view.series, spans)
    if lines:
        console.print(f"{view.metric} forecast (bar: p50, |: p90, ◀: in a window)")
        for line in lines:
            console.print(line, highlight=False)


def _with_confidence(peak: Any) -> str:
    """A resource's p90 and, when known, how sure the forecast of it is."""
    if peak is None or peak.p90 is None:
        return "-"
    sure = f" ({peak.confidence:.2f})" if peak.confidence is not None else ""
    return f"{fmt(peak.p90)}{sure}"


def retrain() -> None:
    """Retrain the clients whose forecasts drifted (or that clients rated poorly), when due.

    A client with an open drift episode is retrained when it was not retrained for drift or
    feedback within PREWARM_RETRAIN_COOLDOWN and has usage newer than its last model saw;
    the others are listed with why they wait. Each version is tagged with its trigger.
    """
    load_settings(runs_flows=True)
    from flows.retrain import retrain_drifted

    print_retraining(retrain_drifted())


def print_retraining(summary: Any) -> None:
    """The table of a retrain-drifted run: who was retrained (trigger, version), who waits."""
    if not (summary.retrained or summary.skipped or summary.failures):
        console.print("Retraining: no open drift episode.")
        return
    table = Table("client", "trigger", "version", "alias", "why")
    for done in sorted(summary.retrained, key=lambda r: r.client_id):
        alias = "champion" if done.promoted else "challenger"
        table.add_row(done.client_id, done.trigger, done.version, alias, done.reason)
    for client_id, why in sorted(summary.skipped.items()):
        table.add_row(client_id, "-", "-", "-", f"skipped: {why}")
    for client_id, why in sorted(summary.failures.items()):
        table.add_row(client_id, "-", "-", "-", f"[red]failed[/]: {why}")
    console.print(table)
    console.print(
        f"Retrained {len(summary.retrained)}, {len(summary.skipped)} waiting, "
        f"{len(summary.failures)} failed in {summary.seconds:.1f} s."
    )


def review_url(settings: Settings) -> str:
    """Where the forecasters can be reviewed, and what serves it."""
    from flows.stack import mlflow_ui_url

    url = mlflow_ui_url(settings)
    return url if url == settings.mlflow_tracking_uri else f"`prewarm up`, {url}"
