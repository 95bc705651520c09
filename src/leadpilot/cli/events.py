"""``leadpilot events``: the event log and its Redis Stream relay."""

from __future__ import annotations

import typer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from leadpilot.cli.common import console, emit_json, engine, fail, require_migrated, settings
from leadpilot.crm.events import bus, relay_outbox
from leadpilot.crm.models import Event, OutboxEntry

app = typer.Typer(help="The append-only event log.", no_args_is_help=True)


@app.command("relay")
def relay(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Publish events left in the outbox (e.g. while Redis was down) to the Redis Stream."""
    cfg = settings()
    if not cfg.redis_url:
        fail("LEADPILOT_REDIS_URL is not set; there is no stream to publish to")
    eng = engine()
    require_migrated(eng)
    bus.configure_redis(cfg.redis_url, cfg.redis_stream)
    published = relay_outbox(eng)
    with Session(eng) as session:
        left = session.scalar(select(func.count()).select_from(OutboxEntry)) or 0
    if json_out:
        emit_json({"published": published, "left": left, "stream": cfg.redis_stream})
    else:
        console.print(f"published {published} events to {cfg.redis_stream}; {left} left in the outbox")


@app.command("stats")
def stats(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Count events by type."""
    eng = engine()
    require_migrated(eng)
    with Session(eng) as session:
        rows = session.execute(select(Event.type, func.count()).group_by(Event.type).order_by(Event.type)).all()
    data = {t: n for t, n in rows}
    if json_out:
        emit_json(data)
    else:
        for t, n in data.items():
            console.print(f"{t:20} {n:>10,}")
