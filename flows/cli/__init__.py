"""The `prewarm` command line: every user-facing action, each a thin call into a flow.

`app` is assembled here from the command modules (`data`, `models`, `registry`, `pools`,
`clients`, `services`, `simulate`, `demo`); the order of registration is the order of
`prewarm --help`.
Commands import their flows lazily, so `--help` stays fast.
"""

from __future__ import annotations

import typer
from pydantic import ValidationError

from core.errors import PrewarmError
from flows.cli import clients, data, demo, models, pools, registry, services, simulate
from flows.cli.common import console, errors

__all__ = ["app", "console", "errors", "main"]

app = typer.Typer(
    help="prewarm: forecast each client's demand and warm capacity before it arrives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _command in (
    data.ingest,
    data.sql,
    models.train,
    models.predict,
    models.profile,
    models.backtest,
    pools.provision,
    pools.score,
    models.retrain,
    pools.pools,
    pools.cycle,
    services.api,
    services.up,
    simulate.replay,
    simulate.soak,
    demo.demo,
):
    app.command()(_command)
# The old name of `score`, for operators' scripts: not listed, says it moved, then scores.
app.command(hidden=True)(pools.reconcile)

app.add_typer(registry.registry_app, name="registry")
app.add_typer(clients.clients_app, name="clients")
app.add_typer(clients.schema_app, name="schema")
app.add_typer(pools.images_app, name="images")
app.add_typer(pools.inventory_app, name="inventory")
app.add_typer(data.feed_app, name="feed")
app.add_typer(data.calendar_app, name="calendar")


def main() -> None:
    """Entry point: run the CLI, turning expected failures into one clear message."""
    try:
        # Outside standalone mode a command's `typer.Exit(code)` comes back as the return value.
        code = app(standalone_mode=False)
    except PrewarmError as error:
        errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except ValidationError as error:
        errors.print(
            f"[bold red]error:[/] invalid setting: {error}", highlight=False, soft_wrap=True
        )
        raise SystemExit(2) from None
    except (typer.Exit, typer.Abort) as stop:
        raise SystemExit(getattr(stop, "exit_code", 1)) from None
    except typer.TyperException as error:
        # Usage errors (unknown command, bad option value: exit 2) from the click that typer
        # vendors; upstream `click.ClickException` is not their base.
        show = getattr(error, "show", None)
        if show is not None:
            show()
        else:
            errors.print(f"Error: {error.format_message()}", highlight=False, soft_wrap=True)
        raise SystemExit(error.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)
