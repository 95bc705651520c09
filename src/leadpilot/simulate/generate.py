"""Write a simulated company's history into the CRM store through the bulk path, day by day.

The history is what a real CRM would hold after running for ``days``: users and teams, accounts and
contacts, leads in every stage, and the event log (site visits and form submits before arrival,
screening calls, transfers, assignments, sales calls, meetings, quotes, contracts, payments, losses).
Historical routing is what most CRMs do today: round robin within the lead's region, respecting daily
capacity. The hidden truth goes to ``truth.npz`` beside, never into the CRM store.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from leadpilot.auth.security import hash_password
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.audit import audit
from leadpilot.crm.dashboard import backfill_milestones
from leadpilot.crm.models import Account, Contact, Lead, Role, Team, TeamKind, User
from leadpilot.crm.normalise import company_key
from leadpilot.db.bulk import bulk_insert, refresh_statistics, reserve_ids
from leadpilot.simulate.behaviour import ChunkOutcomes, chunk_events
from leadpilot.simulate.eventlog import bulk_load, write_batch
from leadpilot.simulate.world import (
    INDUSTRY_BY_PRODUCT,
    NEEDS,
    PRODUCT_LINES,
    REGIONS,
    SEGMENTS,
    SOURCES,
    Leads,
    World,
    day_start,
    office_time,
)

Progress = Callable[[int, int], None]
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
_GIVEN = ("伟", "芳", "娜", "敏", "静", "磊", "强", "洋", "艳", "杰", "军", "勇", "涛", "明", "超", "霞")
_BRANDS = ("安居", "鑫源", "好运", "优选", "诚信", "顺达", "美家", "乐业", "金牌", "惠民", "新锐", "恒通")
_KINDS = ("房产", "车行", "人力资源", "家政", "搬家", "装修", "保洁", "汽车服务")


class AlreadySimulated(RuntimeError):
    """The database already holds leads; the simulator only fills an empty CRM store."""


@dataclass
class SimulationSummary:
    """What a generation run wrote."""

    scale: str
    seed: int
    days: int
    users: int = 0
    teams: int = 0
    accounts: int = 0
    leads: int = 0
    events: int = 0
    stages: dict[str, int] = field(default_factory=dict)
    event_types: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    truth_file: str = ""
    logins: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["events_per_second"] = round(self.events / self.seconds, 1) if self.seconds else 0.0
        return data


def _people_rows(session: Session, world: World, logins: dict[str, str]) -> tuple[list[int], list[int], int]:
    """Create teams and users; returns (salesperson user ids, screener user ids, supervisor count)."""
    people = world.people
    root = Team(name="Sales", kind=TeamKind.SALES.value)
    screening = Team(name="Opportunity group", kind=TeamKind.OPPORTUNITY.value)
    session.add_all([root, screening])
    session.flush()
    teams = [
        Team(name=f"Sales {i + 1:02d}", kind=TeamKind.SALES.value, parent_id=root.id) for i in range(people.n_teams)
    ]
    session.add_all(teams)
    session.flush()
    # Simulated staff share one unguessable password hash; demo logins get their own printed passwords.
    locked = hash_password(secrets.token_urlsafe(24))

    def user(username: str, role: Role, team_id: int | None, **extra: Any) -> User:
        password = logins.get(username)
        row = User(
            username=username,
            full_name=username.replace("_", " ").title(),
            role=role.value,
            team_id=team_id,
            password_hash=hash_password(password) if password else locked,
            time_zone="Asia/Shanghai",
            **extra,
        )
        session.add(row)
        return row

    user("admin", Role.ADMIN, None)
    user("sup_all", Role.SUPERVISOR, root.id)
    supervisors = [user(f"sup_{i + 1:02d}", Role.SUPERVISOR, t.id) for i, t in enumerate(teams)]
    sales = [
        user(
            f"sales_{i + 1:04d}",
            Role.SALES,
            teams[int(people.sales_team[i])].id,
            product_lines=[PRODUCT_LINES[j] for j in people.product_lines[i]],
            regions=[REGIONS[int(people.sales_region[i])]],
            daily_capacity=int(people.capacity[i]),
        )
        for i in range(people.n)
    ]
    screeners = [
        user(f"screener_{i + 1:03d}", Role.SCREENER, screening.id, daily_capacity=80) for i in range(people.screeners)
    ]
    session.flush()
    return [u.id for u in sales], [u.id for u in screeners], len(supervisors)


def _merchant_names(rng: np.random.Generator, n: int, offset: int) -> tuple[list[str], list[str]]:
    brands = rng.integers(0, len(_BRANDS), n)
    kinds = rng.integers(0, len(_KINDS), n)
    surnames = rng.integers(0, len(_SURNAMES), n)
    given = rng.integers(0, len(_GIVEN), (n, 2))
    companies = [
        f"{_BRANDS[b]}{_KINDS[k]}{offset + i + 1:06d}" for i, (b, k) in enumerate(zip(brands, kinds, strict=True))
    ]
    people = [
        f"{_SURNAMES[s]}{_GIVEN[g[0]]}{_GIVEN[g[1]] if g[1] % 3 else ''}" for s, g in zip(surnames, given, strict=True)
    ]
    return companies, people


def _phone(i: int) -> str:
    prefixes = (130, 131, 132, 133, 135, 136, 137, 138, 139, 150, 151, 152, 157, 158, 159, 182, 186, 188)
    return f"+86{prefixes[i % len(prefixes)]}{(i * 7919 + 12345) % 100_000_000:08d}"


CHUNK_LEADS = 20_000  # leads per transaction; a chunk's events (≈ 1 M) are built and written together


def generate(
    engine: Engine,
    world: World,
    *,
    data_dir: Path,
    logins: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> SimulationSummary:
    """Simulate ``world.days`` of history into an empty CRM store and save the truth beside it."""
    started = time.perf_counter()
    summary = SimulationSummary(world.scale.name, world.seed, world.days, logins=dict(logins or {}))
    with Session(engine, expire_on_commit=False) as session:
        if session.scalar(select(func.count()).select_from(Lead)):
            raise AlreadySimulated("the CRM store already holds leads; simulate into an empty database")
        sales_ids, screener_ids, n_sup = _people_rows(session, world, summary.logins)
        audit(session, SYSTEM, "simulate", "user", None, {"scale": world.scale.name, "seed": world.seed})
        session.commit()
    summary.users = len(sales_ids) + len(screener_ids) + n_sup + 2
    summary.teams = world.people.n_teams + 2
    team_ids = _team_ids(engine)
    leads = world.leads_for_days(0, world.days)
    n = len(leads)
    lead_ids: np.ndarray = np.array(reserve_ids(engine, Lead.__table__, n))  # type: ignore[arg-type]
    contact_ids: np.ndarray = np.array(reserve_ids(engine, Contact.__table__, n))  # type: ignore[arg-type]
    account_ids: np.ndarray = np.array(reserve_ids(engine, Account.__table__, n))  # type: ignore[arg-type]
    history = _History(world, leads, np.array(sales_ids), np.array(screener_ids))
    history.run()
    rng = np.random.default_rng(np.random.SeedSequence([world.seed, 4]))
    companies, names = _merchant_names(rng, n, 0)
    ids = _RowIds(lead_ids, contact_ids, account_ids, team_ids)
    order = np.argsort(leads.arrival, kind="stable")
    stages: Counter[str] = Counter()
    event_types: Counter[str] = Counter()
    with engine.connect() as conn, bulk_load(conn):
        for chunk, start in enumerate(range(0, n, CHUNK_LEADS)):
            idx = order[start : start + CHUNK_LEADS]
            outcomes = history.outcomes(idx)
            chunk_rng = np.random.default_rng(np.random.SeedSequence([world.seed, 6, chunk]))
            batch = chunk_events(world, leads, idx, outcomes, _has_email(idx), chunk_rng)
            with Session(bind=conn) as session:
                _write_leads(session, world, leads, idx, outcomes, ids, companies, names)
                summary.events += write_batch(session, batch, lead_ids[idx])
                session.commit()
            stages.update(outcomes.stage.tolist())
            event_types.update(batch.counts())
            if progress:
                progress(min(start + CHUNK_LEADS, n), n)
    with engine.begin() as conn:  # the bulk path bypasses crm.leads: the dashboard's milestones from the log
        backfill_milestones(conn)
    refresh_statistics(engine)
    truth_path = data_dir / "simulation" / "truth.npz"
    world.save_truth(
        truth_path,
        {
            "lead_id": lead_ids,
            "quality": leads.quality,
            "hidden": leads.hidden,
            "p_connect": leads.p_connect,
            "rep_user_id": np.array(sales_ids),
            "assigned_rep": history.rep,
            "assigned_day": history.assigned_day,
            "p_transfer_at_decision": history.p_transfer,
            "p_convert_at_decision": history.p_convert,
        },
    )
    summary.accounts = summary.leads = n
    summary.stages = dict(sorted(stages.items()))
    summary.event_types = dict(sorted(event_types.items()))
    summary.truth_file = str(truth_path)
    summary.seconds = time.perf_counter() - started
    return summary


def _has_email(idx: np.ndarray) -> np.ndarray:
    """Which leads' contacts have an email address (a third of them; the rest are reached by phone/WeChat)."""
    return np.asarray(idx % 3 == 0)


def _team_ids(engine: Engine) -> dict[int, int]:
    """Salesperson index's team id by the order teams were created (Sales 01, 02, ...)."""
    with Session(engine) as session:
        rows = session.execute(select(Team.id, Team.name).where(Team.name.like("Sales %")).order_by(Team.name))
        return {i: tid for i, (tid, _name) in enumerate(rows)}


class _History:
    """The historical run: screening, transfer, round-robin routing with capacity, and outcomes."""

    def __init__(self, world: World, leads: Leads, sales_ids: np.ndarray, screener_ids: np.ndarray) -> None:
        self.world, self.leads = world, leads
        self.sales_ids, self.screener_ids = sales_ids, screener_ids
        n = len(leads)
        self.attempts = np.zeros(n, dtype=np.int64)
        self.connected_day = np.full(n, np.nan)
        self.qualified = np.zeros(n, dtype=bool)
        self.rep = np.full(n, -1, dtype=np.int64)
        self.assigned_day = np.full(n, np.nan)
        self.p_transfer = np.full(n, np.nan)
        self.p_convert = np.full(n, np.nan)
        self.won = np.zeros(n, dtype=bool)
        self.closed_day = np.full(n, np.nan)
        self.screener = np.zeros(n, dtype=np.int64)
        self.first_call = np.zeros(n)
        self.attempt_day = np.zeros((n, world.params.max_attempts))

    def run(self) -> None:
        world, leads = self.world, self.leads
        p, end = world.params, float(world.days)
        rng = np.random.default_rng(np.random.SeedSequence([world.seed, 5]))
        n = len(leads)
        due = leads.arrival + rng.exponential(p.screen_delay_days, n)
        self.screener = rng.integers(0, len(self.screener_ids), n)
        # Screeners call in office hours: every attempt is due retry_gap_days after the one before.
        self.attempt_day = office_time(due[:, None] + p.retry_gap_days * np.arange(p.max_attempts))
        self.first_call = self.attempt_day[:, 0]
        connected_at = np.argmax(leads.u_attempts < leads.p_connect[:, None], axis=1)
        ever = (leads.u_attempts < leads.p_connect[:, None]).any(axis=1)
        attempts = np.where(ever, connected_at + 1, p.max_attempts)
        last_attempt = self.attempt_day[np.arange(n), attempts - 1]
        # Only attempts that happened before the end of the history count.
        done = last_attempt < end
        self.attempts = np.minimum(attempts, (self.attempt_day < end).sum(axis=1)).astype(np.int64)
        self.connected_day = np.where(ever & done, last_attempt, np.nan)
        delay = np.nan_to_num(self.connected_day - leads.arrival)
        self.p_transfer = np.where(ever & done, world.p_transfer(leads, delay), np.nan)
        self.qualified = (ever & done) & (leads.u_transfer < np.nan_to_num(self.p_transfer))
        self._route(end)

    def _route(self, end: float) -> None:
        """Round robin within the lead's region (any region when it has nobody), next morning, with capacity."""
        world, leads, people = self.world, self.leads, self.world.people
        qualified = np.flatnonzero(self.qualified)
        ready = np.floor(self.connected_day[qualified]) + 1.0 + 9 / 24  # assigned next morning at nine
        order = qualified[np.argsort(ready, kind="stable")]
        by_region = {r: [int(x) for x in np.flatnonzero(people.sales_region == r)] for r in range(len(REGIONS))}
        everyone = list(range(people.n))
        pointer = {r: 0 for r in range(len(REGIONS))}
        pointer[-1] = 0
        load: dict[tuple[int, int], int] = {}
        for i in order:
            day = float(np.floor(self.connected_day[i]) + 1.0)
            while day < end:
                region = int(leads.region[i])
                pool = by_region[region] or everyone
                key = region if by_region[region] else -1
                chosen = -1
                for _ in range(len(pool)):
                    rep = pool[pointer[key] % len(pool)]
                    pointer[key] += 1
                    if load.get((rep, int(day)), 0) < people.capacity[rep]:
                        chosen = rep
                        break
                if chosen >= 0:
                    break
                day += 1.0  # everyone full today: waits in the pool for tomorrow
            if day >= end:
                continue  # still in the claim pool when the history ends
            count = load.get((chosen, int(day)), 0) + 1
            load[(chosen, int(day))] = count
            assigned = day + 9 / 24 + 0.01 * (count % 20)
            self.rep[i], self.assigned_day[i] = chosen, assigned
            wait = assigned - self.connected_day[i]
            pc = float(world.p_convert(leads, np.array([i]), np.array([chosen]), load=count, delay_days=wait)[0])
            self.p_convert[i] = pc
            closed = float(office_time(np.array(assigned + leads.cycle_days[i])))
            if closed < end:
                self.closed_day[i] = closed
                self.won[i] = leads.u_convert[i] < pc

    def outcomes(self, idx: np.ndarray) -> ChunkOutcomes:
        """The decided outcomes of the leads ``idx``, chunk-local, with user ids in place of indexes."""
        rep = self.rep[idx]
        return ChunkOutcomes(
            first_call=self.first_call[idx],
            attempt_day=self.attempt_day[idx],
            attempts=self.attempts[idx],
            connected_day=self.connected_day[idx],
            qualified=self.qualified[idx],
            screener=self.screener_ids[self.screener[idx]],
            owner=np.where(rep >= 0, self.sales_ids[np.maximum(rep, 0)], -1),
            rep=rep,
            assigned_day=self.assigned_day[idx],
            closed_day=self.closed_day[idx],
            won=self.won[idx],
            stage=np.full(idx.shape[0], "new", dtype=object),
            stage_changed=self.leads.arrival[idx].copy(),
        )


@dataclass
class _RowIds:
    """Reserved ids per lead position, and the team id of each sales team index."""

    lead: np.ndarray
    contact: np.ndarray
    account: np.ndarray
    team: dict[int, int]


def _write_leads(
    session: Session,
    world: World,
    leads: Leads,
    idx: np.ndarray,
    out: ChunkOutcomes,
    ids: _RowIds,
    companies: list[str],
    names: list[str],
) -> None:
    """Accounts, contacts and leads of a chunk through the bulk path (events are written apart)."""
    people = world.people
    accounts, contacts, rows = [], [], []
    positions = idx.tolist()
    owners = out.owner.tolist()
    teams = [ids.team.get(int(people.sales_team[r])) if r >= 0 else None for r in out.rep.tolist()]
    created_at = [day_start(d) for d in leads.arrival[idx].tolist()]
    changed_at = [day_start(d) for d in out.stage_changed.tolist()]
    stages = out.stage.tolist()
    for j, i in enumerate(positions):
        lid, cid, aid = int(ids.lead[i]), int(ids.contact[i]), int(ids.account[i])
        product, region, segment = int(leads.product[i]), int(leads.region[i]), int(leads.segment[i])
        created = created_at[j]
        company = companies[i]
        accounts.append(
            {
                "id": aid,
                "name": company,
                "name_key": company_key(company),
                "industry": INDUSTRY_BY_PRODUCT[product],
                "region": REGIONS[region],
                "size": SEGMENTS[segment],
                "created_at": created,
                "updated_at": created,
            }
        )
        contacts.append(
            {
                "id": cid,
                "account_id": aid,
                "name": names[i],
                "phone": _phone(i),
                "email": f"m{lid}@merchant.example" if i % 3 == 0 else None,
                "consent": "granted",
                "do_not_call": bool(i % 97 == 0),
                "created_at": created,
                "updated_at": created,
            }
        )
        stage = stages[j]
        owner = owners[j]
        need = NEEDS[PRODUCT_LINES[product]][i % 3]
        rows.append(
            {
                "id": lid,
                "title": f"{company} · {need}",
                "account_id": aid,
                "contact_id": cid,
                "product_line": PRODUCT_LINES[product],
                "source": SOURCES[int(leads.source[i])],
                "region": REGIONS[region],
                "budget": float(leads.budget[i]),
                "owner_id": owner if owner >= 0 else None,  # lost and won leads keep their last owner
                "team_id": teams[j],
                "stage": stage,
                "stage_changed_at": changed_at[j],
                "lost_reason": _lost_reason(out, j) if stage == "lost" else None,
                "notes": f"needs: {need}",
                "external_id": f"SIM-{lid}",
                "version": 1,
                "created_at": created,
                "updated_at": changed_at[j],
            }
        )
    bulk_insert(session, Account.__table__, accounts)  # type: ignore[arg-type]
    bulk_insert(session, Contact.__table__, contacts)  # type: ignore[arg-type]
    bulk_insert(session, Lead.__table__, rows)  # type: ignore[arg-type]


def _lost_reason(out: ChunkOutcomes, j: int) -> str:
    if np.isnan(out.connected_day[j]):
        return "unreachable"
    if not out.qualified[j]:
        return "not interested"
    return "chose a competitor"
