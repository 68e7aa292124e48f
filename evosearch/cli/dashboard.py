"""`evosearch dashboard`: the read-only web app over a store, for a browser."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evosearch.cli.common import err_console, verb
from evosearch.errors import RunFailure, UsageError

TOKEN_ENV = "EVOSEARCH_DASHBOARD_TOKEN"


@verb
def dashboard_command(
    store: Optional[str] = typer.Option(None, "--store", help="store URL (SQLite or PostgreSQL; a SELECT-only "
                                                              "role suffices)"),
    runs: Optional[Path] = typer.Option(None, "--runs", help="show every DIR/*/evosearch.db (default: runs)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; anything but loopback needs "
                                                         "--token"),
    port: int = typer.Option(8765, "--port", help="port to listen on"),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV, show_envvar=True,
                                        help="every request must carry it (required off loopback)"),
) -> None:
    """A live web dashboard of the jobs in a store: the Pareto front as it grows, convergence, every
    candidate with its recipe, and the workers' timelines. Read-only: it never writes to the store.

    Examples:

      evosearch dashboard                                  (every job under runs/, on http://127.0.0.1:8765)

      evosearch dashboard --store postgresql+psycopg://viewer@db:5432/evosearch --port 8080

      EVOSEARCH_DASHBOARD_TOKEN=$(openssl rand -hex 16) evosearch dashboard --host 0.0.0.0
    """
    # start-up time: Starlette, uvicorn and the views' imports (torch, through the recipes) load only here
    from evosearch.views.dashboard.app import DashboardServer, create_app, is_loopback
    from evosearch.views.dashboard.stores import StoreSet

    if store is not None and runs is not None:
        raise UsageError("give --store URL or --runs DIR, not both")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a port (0-65535)")
    public = not is_loopback(host)
    if public and not token:
        raise UsageError(f"--host {host} serves other machines: give --token (or set {TOKEN_ENV})")
    runs_dir = None if store is not None else runs or Path("runs")
    stores = StoreSet(store, runs_dir)
    stores.check()
    try:
        server = DashboardServer(create_app(stores, token), host, port)
    except OSError as e:
        raise RunFailure(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    where = f"every {runs_dir}/*/evosearch.db" if runs_dir else stores.get(stores.keys()[0]).url_for_display
    if public:
        err_console.print(f"warning: listening on {host}:{server.port}, reachable from other machines; every "
                          "request must carry the token. Prefer 127.0.0.1 and an SSH tunnel.",
                          markup=False, highlight=False)
    typer.echo(f"evosearch dashboard on {server.url}/ ({where}); read-only; Ctrl-C to stop"
               + ("; open it with ?token=TOKEN once" if token else ""))
    server.serve()


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard_command)
