"""The generative model of the simulated company: its people, its leads and the hidden truth about them.

Everything random is drawn from ``numpy.random.Generator`` streams derived from one seed, so a world is
a pure function of (scale, seed, days). The truth (latent lead quality, hidden noise, salespeople's
latent skills and affinities, the outcome model's coefficients) lives in ``Truth`` and is saved apart
from the CRM store (``truth.npz``); nothing in the CRM store is derived from it except the realised
outcomes, exactly as a real company only ever sees outcomes.

Outcome model (all probabilities through the logistic function ``σ``):

* screening contact, per call attempt: ``p_connect`` (a property of the lead's phone habits);
* transfer (screening → qualified) once connected: ``σ(a_t + q − d_t·delay_days)``;
* conversion (→ won) of a transferred lead worked by salesperson r:
  ``σ(a_c + b_q·q + skill[r, product] + affinity[r, segment] + g·same_region − w·overload − d_c·delay_days)``
  where ``q`` is latent quality (observable features plus hidden noise), ``overload`` is
  ``max(0, load/capacity − 1)`` on the day of assignment and ``delay_days`` the wait from qualification to
  assignment (speed-to-lead decay). Interaction terms (skill × product, affinity × segment, region match)
  make routing matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

PRODUCT_LINES = ("housing", "used_cars", "recruitment", "local_services")
PRODUCT_SHARE = (0.30, 0.20, 0.25, 0.25)
# Median contract value by product line (lognormal, CV ≈ 1.1 as in the real CRM data).
PRODUCT_VALUE_MEDIAN = (1200.0, 950.0, 700.0, 500.0)
REGIONS = ("Beijing", "Shanghai", "Guangzhou", "Shenzhen", "Chengdu", "Hangzhou", "Wuhan", "Xian")
REGION_SHARE = (0.18, 0.18, 0.14, 0.13, 0.11, 0.10, 0.09, 0.07)
SEGMENTS = ("micro", "small", "medium")
SEGMENT_SHARE = (0.55, 0.35, 0.10)
SOURCES = ("web_form", "app", "phone_in", "partner", "ad_campaign")
SOURCE_SHARE = (0.30, 0.30, 0.10, 0.10, 0.20)
SOURCE_QUALITY = (0.2, 0.0, 0.6, 0.3, -0.5)
INDUSTRY_BY_PRODUCT = ("real_estate_agency", "car_dealer", "staffing", "home_services")
NEEDS = {
    "housing": ("list rental flats", "promote new listings", "more buyer calls"),
    "used_cars": ("sell trade-ins faster", "reach buyers in the city", "list more cars"),
    "recruitment": ("hire drivers", "hire shop staff", "hire cleaners"),
    "local_services": ("more moving jobs", "more cleaning orders", "repair bookings"),
}
# Monthly seasonality (Jan..Dec) and weekday profile (Mon..Sun) of lead arrivals.
SEASON = (0.75, 0.70, 1.05, 1.10, 1.05, 1.00, 0.95, 0.95, 1.10, 1.15, 1.10, 1.10)
WEEKDAY = (1.15, 1.12, 1.10, 1.08, 1.00, 0.80, 0.75)
# Arrival hour profile (0..23): office hours with a morning and an afternoon peak.
HOURLY = (1, 1, 1, 1, 1, 2, 4, 8, 14, 18, 17, 14, 10, 12, 15, 16, 14, 11, 9, 8, 7, 5, 3, 2)
START = date(2025, 5, 1)


@dataclass(frozen=True)
class Scale:
    """How big a simulated company is."""

    name: str
    salespeople: int
    screeners: int
    leads: int


SCALES = {
    "tiny": Scale("tiny", 8, 2, 3_000),
    "small": Scale("small", 20, 4, 20_000),
    "medium": Scale("medium", 200, 30, 300_000),
    "large": Scale("large", 2_000, 200, 1_000_000),
}


@dataclass
class Params:
    """Every parameter of the generative process (documented in docs/simulation.md)."""

    p_connect_mean: float = 0.42  # per screening attempt; attempts per lead ≈ 2.5 as in bank marketing
    max_attempts: int = 6
    after_visits_log_rate: float = 0.8  # log mean of site visits in the 30 days after arrival (× interest)
    inquiry_log_rate: float = -1.2  # log mean of inbound messages after arrival (× interest)
    screen_delay_days: float = 0.35  # mean wait from arrival to the first screening call (exponential)
    retry_gap_days: float = 0.8  # between screening attempts
    target_conversion: float = 0.113  # won / closed leads, as subscriptions per called client in bank marketing
    target_win: float = 0.63  # won / (won + lost) of transferred leads, as in the real CRM data
    quality_weights: dict[str, float] = field(
        default_factory=lambda: {"source": 1.0, "log_budget": 0.35, "visits": 0.12, "segment": 0.25}
    )
    hidden_sd: float = 0.8  # latent quality noise nobody observes
    b_quality: float = 0.9
    skill_sd: float = 0.6  # spread of salespeople's skill per product line (centred per person)
    affinity_sd: float = 0.45  # spread of salespeople's affinity per customer segment (centred per person)
    tenure_gain: float = 0.05  # skill gained per log-year of tenure
    region_match: float = 0.35
    overload_penalty: float = 1.2
    delay_transfer: float = 0.25  # per day waiting for the first screening call
    delay_convert: float = 0.30  # per day waiting in the pool before a salesperson takes it
    value_sigma: float = 0.7  # lognormal sigma of contract value within a product line and segment
    segment_value: float = 0.3  # log-value premium per segment step (micro → small → medium)
    cycle_median_days: float = 45.0  # days from transfer to won/lost (real CRM: median 45)
    cycle_shape: float = 1.3  # Weibull shape of the sales cycle (real CRM: p10 4, p90 104 days)
    trend_per_year: float = 0.15
    # Behaviour in the event log (docs/simulation.md, "Event catalogue"); h is the lead's hidden interest.
    pages_log_rate: float = 1.0  # pages per site session: 1 + Poisson(exp(this + 0.3·h))
    search_log_rate: float = 0.3  # searches before the form: Poisson(exp(this + 0.4·h)); after: this − 0.5
    ad_clicks_extra: float = 0.6  # ad-campaign leads: 1 + Poisson(this · exp(0.3·h)) ad clicks
    ad_clicks_other: float = 0.12  # other leads: Poisson(this) ad clicks
    nurture_weeks: int = 6  # weekly newsletters after arrival (email or WeChat)
    open_logit: float = -0.8  # newsletter email opened: σ(this + 0.9·h)
    missed_call_sms: float = 0.6  # a screener texts after an unanswered call with this probability
    followup_gap_days: float = 3.0  # a salesperson's mean gap between follow-ups, ÷ exp(gain·fit + 0.3·h)
    followup_fit_gain: float = 0.6  # better-matched salespeople (skill + affinity) follow up more often
    reply_logit: float = -1.2  # a lead replies to a follow-up: σ(this + 0.8·h + 0.5·fit)
    a_transfer: float = 0.0  # intercepts, solved at world creation to hit the targets
    a_convert: float = 0.0


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class People:
    """Salespeople and screeners with their observable attributes and (hidden) skills."""

    sales_region: np.ndarray  # region index per salesperson
    sales_team: np.ndarray  # team index per salesperson
    tenure_years: np.ndarray
    capacity: np.ndarray  # leads per day
    product_lines: list[list[int]]  # declared product lines (observable)
    skill: np.ndarray  # (salespeople, products), hidden
    affinity: np.ndarray  # (salespeople, segments), hidden
    n_teams: int
    screeners: int

    @property
    def n(self) -> int:
        return int(self.sales_region.shape[0])


@dataclass
class Leads:
    """A block of leads: observable attributes and hidden truth, as parallel arrays."""

    arrival: np.ndarray  # float days since START
    product: np.ndarray
    region: np.ndarray
    segment: np.ndarray
    source: np.ndarray
    budget: np.ndarray
    visits: np.ndarray
    visits_after: np.ndarray  # site visits in the 30 days after arrival (behaviour keeps telling)
    inquiries: np.ndarray  # inbound messages after arrival
    value: np.ndarray  # contract value if won
    quality: np.ndarray  # latent (observable part + hidden noise), hidden
    hidden: np.ndarray  # the hidden noise alone
    p_connect: np.ndarray  # per screening attempt, hidden
    # Common random numbers: one uniform per lead per decision, shared by every policy.
    u_attempts: np.ndarray  # (n, max_attempts)
    u_transfer: np.ndarray
    u_convert: np.ndarray
    cycle_days: np.ndarray

    def __len__(self) -> int:
        return int(self.arrival.shape[0])


def _stream(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


class World:
    """The simulated company: people, the lead arrival process and the outcome model."""

    def __init__(
        self, scale: str | Scale = "small", *, seed: int = 7, days: int = 548, params: Params | None = None
    ) -> None:
        self.scale = SCALES[scale] if isinstance(scale, str) else scale
        self.seed, self.days = seed, days
        self.params = params or Params()
        self.people = self._people()
        self.daily_rate = self._daily_rates(days + 366)  # room for replay after the history
        self._solve_intercepts()

    # --- people ----------------------------------------------------------------------------------

    def _people(self) -> People:
        rng = _stream(self.seed, 1)
        p, n = self.params, self.scale.salespeople
        n_teams = max(2, math.ceil(n / 10))
        region = rng.choice(len(REGIONS), size=n, p=REGION_SHARE)
        team = np.arange(n) % n_teams
        tenure = rng.gamma(2.0, 1.0, size=n).clip(0.1, 10.0)
        capacity = rng.integers(8, 21, size=n)
        # Strengths are relative: each person's skills and affinities are centred, so overall win rates differ
        # little between people (as in the real CRM data, SD ≈ 0.04) while who-gets-what matters a lot.
        skill = rng.normal(0.0, p.skill_sd, size=(n, len(PRODUCT_LINES)))
        skill = skill - skill.mean(axis=1, keepdims=True) + p.tenure_gain * np.log1p(tenure)[:, None]
        affinity = rng.normal(0.0, p.affinity_sd, size=(n, len(SEGMENTS)))
        affinity = affinity - affinity.mean(axis=1, keepdims=True)
        # Declared product lines: the two a person is best at, plus sometimes a third (noisy self-report).
        lines = []
        for row in skill:
            order = list(np.argsort(-(row + rng.normal(0, 0.3, size=row.shape))))
            lines.append(sorted(int(i) for i in order[: 2 + int(rng.random() < 0.3)]))
        return People(region, team, tenure, capacity, lines, skill, affinity, n_teams, self.scale.screeners)

    # --- arrivals --------------------------------------------------------------------------------

    def _daily_rates(self, horizon: int) -> np.ndarray:
        base = self.scale.leads / self.days
        days = np.arange(horizon)
        dates = [START + timedelta(days=int(d)) for d in days]
        season = np.array([SEASON[d.month - 1] for d in dates])
        weekday = np.array([WEEKDAY[d.weekday()] for d in dates])
        trend = 1.0 + self.params.trend_per_year * (days - self.days / 2) / 365.0
        rate = season * weekday * trend
        return base * rate / rate[: self.days].mean()

    def leads_for_days(self, first_day: int, last_day: int, *, stream: int = 0) -> Leads:
        """The leads arriving on days [first_day, last_day); deterministic per (seed, stream, day)."""
        blocks = [self._leads_of_day(d, stream) for d in range(first_day, last_day)]
        return Leads(*(np.concatenate([getattr(b, f) for b in blocks]) for f in Leads.__dataclass_fields__))

    def _leads_of_day(self, day: int, stream: int) -> Leads:
        rng = _stream(self.seed, 2, stream, day)
        p = self.params
        n = int(rng.poisson(self.daily_rate[day]))
        hours = rng.choice(24, size=n, p=np.array(HOURLY) / sum(HOURLY))
        arrival = day + (hours + rng.random(n)) / 24.0
        product = rng.choice(len(PRODUCT_LINES), size=n, p=PRODUCT_SHARE)
        region = rng.choice(len(REGIONS), size=n, p=REGION_SHARE)
        segment = rng.choice(len(SEGMENTS), size=n, p=SEGMENT_SHARE)
        source = rng.choice(len(SOURCES), size=n, p=SOURCE_SHARE)
        budget = np.round(np.exp(rng.normal(np.log(5000) + 0.8 * segment, 0.9)), -2)
        source_q = np.array(SOURCE_QUALITY)[source]
        hidden = rng.normal(0.0, p.hidden_sd, size=n)
        # Site visits before the lead form depend on the hidden interest too (a noisy, observable signal).
        visits = rng.poisson(np.exp(0.6 + 0.5 * hidden + 0.3 * source_q))
        w = p.quality_weights
        observable = (
            w["source"] * source_q
            + w["log_budget"] * (np.log(budget) - np.log(5000))
            + w["visits"] * (np.minimum(visits, 15) - 2)
            + w["segment"] * (segment - 0.5)
        )
        quality = observable + hidden
        value = np.round(
            np.exp(rng.normal(np.log(np.array(PRODUCT_VALUE_MEDIAN)[product]) + 0.5 * segment, p.value_sigma)), 0
        )
        p_connect = sigmoid(rng.normal(np.log(p.p_connect_mean / (1 - p.p_connect_mean)), 0.8, size=n))
        # After-arrival behaviour from a stream of its own, so adding it left every other draw unchanged.
        later = _stream(self.seed, 8, stream, day)
        visits_after = later.poisson(np.exp(p.after_visits_log_rate + 0.6 * hidden + 0.3 * source_q))
        inquiries = later.poisson(np.exp(p.inquiry_log_rate + 0.7 * hidden))
        return Leads(
            arrival=arrival,
            product=product,
            region=region,
            segment=segment,
            source=source,
            budget=budget,
            visits=visits,
            visits_after=visits_after,
            inquiries=inquiries,
            value=value,
            quality=quality,
            hidden=hidden,
            p_connect=p_connect,
            u_attempts=rng.random((n, p.max_attempts)),
            u_transfer=rng.random(n),
            u_convert=rng.random(n),
            cycle_days=np.maximum(
                0.5, p.cycle_median_days / np.log(2) ** (1 / p.cycle_shape) * rng.weibull(p.cycle_shape, size=n)
            ),
        )

    # --- the outcome model -----------------------------------------------------------------------

    def p_transfer(self, leads: Leads, delay_days: np.ndarray | float = 0.0) -> np.ndarray:
        """True probability that a connected lead is qualified (transferred to sales)."""
        p = self.params
        return sigmoid(p.a_transfer + leads.quality - p.delay_transfer * np.asarray(delay_days))

    def p_convert(
        self,
        leads: Leads,
        idx: np.ndarray,
        reps: np.ndarray,
        *,
        load: np.ndarray | float = 0.0,
        delay_days: np.ndarray | float = 0.0,
    ) -> np.ndarray:
        """True probability that lead ``idx`` converts when worked by salesperson ``reps`` (broadcasting)."""
        p, people = self.params, self.people
        idx, reps = np.asarray(idx), np.asarray(reps)
        capacity = people.capacity[reps]
        overload = np.maximum(0.0, np.asarray(load) / capacity - 1.0)
        logit = (
            p.a_convert
            + p.b_quality * leads.quality[idx]
            + people.skill[reps, leads.product[idx]]
            + people.affinity[reps, leads.segment[idx]]
            + p.region_match * (people.sales_region[reps] == leads.region[idx])
            - p.overload_penalty * overload
            - p.delay_convert * np.asarray(delay_days)
        )
        return sigmoid(logit)

    def _solve_intercepts(self) -> None:
        """Set the two intercepts so that, under round-robin routing, the funnel hits the calibrated targets."""
        sample = self.leads_for_days(0, min(self.days, 120), stream=99)
        rng = _stream(self.seed, 3)
        people = self.people
        # Reps as historical routing picks them: someone from the lead's region when the region has anyone.
        reps = rng.integers(0, people.n, size=len(sample))
        for region in range(len(REGIONS)):
            local = np.flatnonzero(people.sales_region == region)
            mask = sample.region == region
            if local.size:
                reps[mask] = rng.choice(local, size=int(mask.sum()))
        p = self.params
        # Leads reached within max_attempts, and when; transfer is set so won / closed hits the target.
        hit = sample.u_attempts < sample.p_connect[:, None]
        reached = hit.any(axis=1)
        due = sample.arrival + p.screen_delay_days + np.argmax(hit, axis=1) * p.retry_gap_days
        delay = office_time(due) - sample.arrival  # screeners call in office hours
        target_transfer = min(0.95, p.target_conversion / (p.target_win * float(reached.mean())))

        def solve(fn: Any, target: float) -> float:
            lo, hi = -10.0, 10.0
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if fn(mid) < target else (lo, mid)
            return (lo + hi) / 2

        def transfer_rate(a: float) -> float:
            p.a_transfer = a
            return float(self.p_transfer(sample, delay)[reached].mean())

        p.a_transfer = solve(transfer_rate, target_transfer)
        weight = self.p_transfer(sample, delay) * reached

        def win_rate(a: float) -> float:
            p.a_convert = a
            pc = self.p_convert(sample, np.arange(len(sample)), reps, delay_days=0.5)
            return float((pc * weight).sum() / weight.sum())

        p.a_convert = solve(win_rate, p.target_win)

    # --- persistence -----------------------------------------------------------------------------

    def save_truth(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """Write the hidden truth (never read by features or models) to an .npz file of its own."""
        path.parent.mkdir(parents=True, exist_ok=True)
        people = self.people
        arrays: dict[str, Any] = {
            "skill": people.skill,
            "affinity": people.affinity,
            "capacity": people.capacity,
            "sales_region": people.sales_region,
            "params": np.array(repr(self.params.__dict__)),
            "meta": np.array(repr({"scale": self.scale.name, "seed": self.seed, "days": self.days})),
        }
        arrays.update(extra or {})
        np.savez_compressed(path, **arrays)


OPENS, CLOSES = 9 / 24, 18 / 24  # office hours of screeners and salespeople (day fractions)


def office_time(day: np.ndarray) -> np.ndarray:
    """When staff act on something due at ``day``: never earlier, always in office hours, order kept.

    Each span from 18:00 to the next day's 18:00 is mapped linearly onto that next day's 09:00-18:00,
    so an evening task waits for the morning and daytime ones keep their order.
    """
    span = np.floor(day - CLOSES)
    return span + 1 + OPENS + (day - span - CLOSES) * (CLOSES - OPENS)


def day_start(day: float) -> datetime:
    """The wall-clock time of a simulated day offset."""
    return datetime(START.year, START.month, START.day, tzinfo=UTC) + timedelta(days=float(day))
