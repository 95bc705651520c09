"""Calibration: the same statistics computed on real public data and on a simulated CRM store.

Real figures come from ``../shared/data`` (UCI Bank Marketing: outbound calls and their outcome; Maven
"CRM Sales Opportunities": B2B deals with agent, product, dates and value). Simulated figures are read
back from the CRM store's event log and leads table, with the same definitions, so the table compares
what a company would actually observe.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, text


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": float("nan"), "p10": float("nan"), "median": float("nan"), "p90": float("nan")}
    return {
        "mean": float(values.mean()),
        "p10": float(np.quantile(values, 0.1)),
        "median": float(np.median(values)),
        "p90": float(np.quantile(values, 0.9)),
    }


def _binned_rate_sd(groups: dict[str, list[int]]) -> float:
    rates = [sum(v) / len(v) for v in groups.values() if len(v) >= 30]
    return float(np.std(rates, ddof=1)) if len(rates) > 1 else float("nan")


def real_statistics(data_dir: Path) -> dict[str, Any]:
    """Statistics of the real data sets; raises FileNotFoundError naming the missing file."""
    bank_file = data_dir / "bank_marketing" / "bank-additional-full.csv"
    pipeline_file = data_dir / "crm_sales_opportunities" / "sales_pipeline.csv"
    for f in (bank_file, pipeline_file):
        if not f.exists():
            raise FileNotFoundError(f"calibration data not found: {f}")
    with bank_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    campaign = np.array([int(r["campaign"]) for r in rows])
    success = np.array([r["y"] == "yes" for r in rows])
    with pipeline_file.open(newline="") as fh:
        deals = [r for r in csv.DictReader(fh) if r["deal_stage"] in ("Won", "Lost")]
    won = np.array([d["deal_stage"] == "Won" for d in deals])
    cycle = np.array([(date.fromisoformat(d["close_date"]) - date.fromisoformat(d["engage_date"])).days for d in deals])
    values = np.array([float(d["close_value"]) for d in deals if d["deal_stage"] == "Won"])
    by_agent: dict[str, list[int]] = defaultdict(list)
    by_product: dict[str, list[int]] = defaultdict(list)
    for d, w in zip(deals, won, strict=True):
        by_agent[d["sales_agent"]].append(int(w))
        by_product[d["product"]].append(int(w))
    return {
        "conversion_per_contacted_lead": float(success.mean()),
        "attempts_per_lead": _quantiles(campaign.astype(float)),
        "single_attempt_share": float((campaign == 1).mean()),
        "win_rate": float(won.mean()),
        "cycle_days": _quantiles(cycle.astype(float)),
        "deal_value": {**_quantiles(values), "cv": float(values.std() / values.mean())},
        "agent_win_rate_sd": _binned_rate_sd(by_agent),
        "product_win_rate_sd": _binned_rate_sd(by_product),
    }


def simulated_statistics(engine: Engine) -> dict[str, Any]:
    """The same statistics read back from a CRM store (the event log and the leads table)."""
    with engine.connect() as conn:
        attempts = np.array(
            conn.execute(
                text(
                    "SELECT COUNT(*) FROM events WHERE type = 'call_attempt' AND actor_id IN "
                    "(SELECT id FROM users WHERE role = 'screener') GROUP BY lead_id"
                )
            )
            .scalars()
            .all(),
            dtype=float,
        )
        closed = conn.execute(
            text("SELECT stage, COUNT(*) FROM leads WHERE stage IN ('won', 'lost') GROUP BY stage")
        ).all()
        counts: dict[str, int] = {str(k): int(v) for k, v in closed}
        # Deals: leads a salesperson worked (assigned) that reached won or lost.
        # Deals: leads a salesperson worked (assigned) that reached won or lost; closed when their stage changed.
        deals = conn.execute(
            text(
                "SELECT l.id, l.stage, l.owner_id, l.product_line, l.stage_changed_at FROM leads l "
                "WHERE l.stage IN ('won', 'lost') "
                "AND EXISTS (SELECT 1 FROM events e WHERE e.lead_id = l.id AND e.type = 'assign')"
            )
        ).all()
        assigned_at: dict[int, Any] = {
            lead_id: when
            for lead_id, when in conn.execute(
                text("SELECT lead_id, MIN(occurred_at) FROM events WHERE type = 'assign' GROUP BY lead_id")
            )
        }
        values = np.array(
            conn.execute(text("SELECT payload FROM events WHERE type = 'contract_signed'")).scalars().all(),
            dtype=object,
        )
    won = np.array([d[1] == "won" for d in deals])
    cycle = []
    for d in deals:
        a, c = assigned_at.get(d[0]), d[4]
        if a is not None and c is not None:
            cycle.append((_as_datetime(c) - _as_datetime(a)).total_seconds() / 86400)
    amounts = np.array([_amount(v) for v in values], dtype=float)
    by_agent: dict[str, list[int]] = defaultdict(list)
    by_product: dict[str, list[int]] = defaultdict(list)
    for d, w in zip(deals, won, strict=True):
        by_agent[str(d[2])].append(int(w))
        by_product[str(d[3])].append(int(w))
    total_closed = sum(counts.values()) or 1
    return {
        "conversion_per_contacted_lead": counts.get("won", 0) / total_closed,
        "attempts_per_lead": _quantiles(attempts),
        "single_attempt_share": float((attempts == 1).mean()) if attempts.size else float("nan"),
        "win_rate": float(won.mean()) if won.size else float("nan"),
        "cycle_days": _quantiles(np.array(cycle)),
        "deal_value": {**_quantiles(amounts), "cv": float(amounts.std() / amounts.mean()) if amounts.size else 0.0},
        "agent_win_rate_sd": _binned_rate_sd(by_agent),
        "product_win_rate_sd": _binned_rate_sd(by_product),
    }


def _as_datetime(value: Any) -> Any:
    from datetime import datetime

    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _amount(payload: Any) -> float:
    import json

    data = payload if isinstance(payload, dict) else json.loads(payload)
    return float(data["amount"])


ROWS = [
    ("conversion per contacted lead (won / closed)", "conversion_per_contacted_lead", None, "bank_marketing: y"),
    ("screening attempts per lead, mean", "attempts_per_lead", "mean", "bank_marketing: campaign"),
    ("screening attempts per lead, median", "attempts_per_lead", "median", "bank_marketing: campaign"),
    ("share of leads reached at the first attempt", "single_attempt_share", None, "bank_marketing: campaign = 1"),
    ("win rate of worked deals (won / won + lost)", "win_rate", None, "crm_sales_opportunities"),
    ("sales cycle days, median", "cycle_days", "median", "crm_sales_opportunities: close − engage"),
    ("sales cycle days, p10", "cycle_days", "p10", "crm_sales_opportunities"),
    ("sales cycle days, p90", "cycle_days", "p90", "crm_sales_opportunities"),
    ("deal value, median", "deal_value", "median", "crm_sales_opportunities: close_value"),
    ("deal value, coefficient of variation", "deal_value", "cv", "crm_sales_opportunities"),
    ("SD of win rate across salespeople", "agent_win_rate_sd", None, "crm_sales_opportunities: by agent"),
    ("SD of win rate across products", "product_win_rate_sd", None, "crm_sales_opportunities: by product"),
]


def comparison(real: dict[str, Any], simulated: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of (statistic, real, simulated, source) for the docs table and --json output."""
    out = []
    for label, key, sub, source in ROWS:
        r = real[key][sub] if sub else real[key]
        s = simulated[key][sub] if sub else simulated[key]
        out.append({"statistic": label, "real": round(float(r), 4), "simulated": round(float(s), 4), "source": source})
    return out
