"""Dashboards: funnel, conversion, leaderboard, speed-to-lead, breakdowns, escalations, today's assignments."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from leadpilot.api.deps import CurrentActor, ReadDB, SessionReleasingRoute, TimeQuery
from leadpilot.crm import dashboard

router = APIRouter(prefix="/dashboard", tags=["dashboard"], route_class=SessionReleasingRoute)


@router.get("")
def get_dashboard(actor: CurrentActor, db: ReadDB, since: TimeQuery = None) -> dict[str, Any]:
    """Every dashboard figure: admins all leads, supervisors their subtree's, salespeople their own (screeners 403).

    ``since`` limits the figures to leads created from then on (escalations: the last 7 days).
    """
    return dashboard.summary(db, actor=actor, since=since)


@router.get("/assignments")
def get_assignments(actor: CurrentActor, db: ReadDB) -> dict[str, Any]:
    """Today's claims and assignments per salesperson, capacity left and pending recommendations (supervisors,
    admins)."""
    return {"items": dashboard.assignment_overview(db, actor=actor)}
