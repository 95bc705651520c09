"""What leads, screeners, salespeople and the marketing system do, as event-log entries (vectorised).

For a chunk of leads whose outcomes the history has already decided, ``chunk_events`` draws every
event of their lives as numpy columns: web behaviour before and after the form, newsletters and their
opens, screening calls, the transfer, the assignment, the owner's follow-ups, milestones and the close.
Rates follow the latent model (the lead's hidden interest, the salesperson's hidden fit for the lead),
so features computed from the log carry signal, but no payload holds a hidden quantity: only what a
CRM would record (pages, queries, call outcomes and durations, message directions, amounts).
The catalogue is documented in docs/simulation.md ("Event catalogue").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leadpilot.simulate.eventlog import EventBatch, payload_json
from leadpilot.simulate.world import PRODUCT_LINES, SOURCES, Leads, World, office_time, sigmoid

# The event catalogue: every type the simulation writes and the keys of its payload (docs/simulation.md).
PAYLOAD_KEYS: dict[str, tuple[str, ...]] = {
    "ad_click": ("campaign", "product_line"),
    "search": ("query", "product_line"),
    "page_view": ("page", "session"),
    "form_submit": ("source", "product_line", "budget"),
    "lead_created": ("via", "source", "product_line"),
    "message": ("direction", "kind", "channel"),
    "email_open": ("kind", "week"),
    "stage_change": ("from", "to", "reason", "owner_id"),
    "call_attempt": ("purpose", "outcome"),
    "call_connected": ("purpose",),
    "call_completed": ("purpose", "duration_s"),
    "note": ("kind",),
    "assign": ("from", "to", "reason"),
    "meeting": ("kind",),
    "quote": ("amount",),
    "contract_signed": ("amount",),
    "payment": ("amount",),
}
EVENT_TYPES = tuple(PAYLOAD_KEYS)
PAGES = ("", "/pricing", "/cases", "/faq", "/listings", "/contact")  # "" is the product's landing page
PAGE_WEIGHTS = (0.30, 0.20, 0.15, 0.25, 0.10)  # of the pages after the landing page
AD_CAMPAIGNS = ("search", "feed", "retargeting")
SEARCH_QUERIES = {
    "housing": ("租房 发布", "二手房 推广", "房产经纪 获客"),
    "used_cars": ("二手车 卖车", "车商 推广", "二手车 估价"),
    "recruitment": ("招聘 司机", "招聘 店员", "发布 招聘信息"),
    "local_services": ("搬家 推广", "保洁 接单", "维修 获客"),
}
CALL_PURPOSES = ("screening", "sales", "follow_up")
CALL_OUTCOMES = ("connected", "no_answer", "busy")
MINUTE = 1 / 1440


def _table(payloads: list[list[dict[str, object]]]) -> np.ndarray:
    """A 2-D object array of pre-serialised payloads, indexed by category codes."""
    table = np.empty((len(payloads), len(payloads[0])), dtype=object)
    for r, row in enumerate(payloads):
        for c, payload in enumerate(row):
            table[r, c] = payload_json(payload)
    return table


AD_CLICK_JSON = _table([[{"campaign": f"{p}_{c}", "product_line": p} for c in AD_CAMPAIGNS] for p in PRODUCT_LINES])
SEARCH_JSON = _table([[{"query": q, "product_line": p} for q in SEARCH_QUERIES[p]] for p in PRODUCT_LINES])
PAGE_PATHS = np.array([[f"/{p}{page}" for page in PAGES] for p in PRODUCT_LINES], dtype=object)
LEAD_CREATED_JSON = _table(
    [[{"via": "simulate", "source": s, "product_line": p} for p in PRODUCT_LINES] for s in SOURCES]
)
CALL_ATTEMPT_JSON = _table([[{"purpose": p, "outcome": o} for o in CALL_OUTCOMES] for p in CALL_PURPOSES])


def _split(template: dict[str, object], key: str) -> tuple[str, str]:
    """The JSON of ``template`` around the value of ``key``: payloads that differ in one number are then
    built by string concatenation (json.dumps per event would cost more than writing the event)."""
    marker = "\x00"
    head, tail = payload_json({**template, key: marker}).split(payload_json(marker))
    return head, tail


FORM_JSON = [
    [_split({"source": s, "product_line": p, "budget": 0.0}, "budget") for p in PRODUCT_LINES] for s in SOURCES
]


def _numbers(template: dict[str, object], key: str, values: list[int] | list[float]) -> np.ndarray:
    """One payload per value: ``template`` with ``key`` set to it (ints and floats print as JSON does)."""
    head, tail = _split(template, key)
    return np.array([f"{head}{v!r}{tail}" for v in values], dtype=object)


def _message(direction: str, kind: str, channel: str) -> str:
    return payload_json({"direction": direction, "kind": kind, "channel": channel})


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For per-lead event counts: each event's lead position and its number within the lead (from 0)."""
    counts = counts.astype(np.int64)
    lead = np.repeat(np.arange(counts.shape[0]), counts)
    first = np.cumsum(counts) - counts
    return lead, np.arange(lead.shape[0]) - first[lead]


def _sorted_within_lead(lead: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` sorted within each lead's run (``lead`` is grouped, as ``_expand`` makes it)."""
    return values[np.lexsort((values, lead))]


@dataclass
class ChunkOutcomes:
    """What the history decided for one chunk of leads (positions are chunk-local)."""

    first_call: np.ndarray
    attempt_day: np.ndarray  # (leads, max_attempts): when each screening call is made, in office hours
    attempts: np.ndarray
    connected_day: np.ndarray  # NaN: never reached
    qualified: np.ndarray
    screener: np.ndarray  # screener user id
    owner: np.ndarray  # salesperson user id, -1: never assigned
    rep: np.ndarray  # salesperson index, -1: never assigned
    assigned_day: np.ndarray
    closed_day: np.ndarray  # NaN: still open at the end (or never worked)
    won: np.ndarray
    # Filled in while the events are drawn: each lead's stage at the end and when it last changed, read
    # from its own stage_change events so the leads table and the log always agree.
    stage: np.ndarray  # object array, starts as "new"
    stage_changed: np.ndarray  # starts as the arrival day


def _change_stage(
    batch: EventBatch,
    out: ChunkOutcomes,
    target: str,
    lead: np.ndarray,
    day: np.ndarray,
    actor: np.ndarray | None,
    payload: np.ndarray | str,
) -> None:
    """A ``stage_change`` event, recorded in the lead's final state when it happens before the end."""
    batch.add("stage_change", lead, day, actor, payload)
    happened = day < batch.end_day
    out.stage[lead[happened]] = target
    out.stage_changed[lead[happened]] = day[happened]


def chunk_events(
    world: World, leads: Leads, idx: np.ndarray, out: ChunkOutcomes, has_email: np.ndarray, rng: np.random.Generator
) -> EventBatch:
    """Every event of the leads ``idx`` (positions into ``leads``), in emission order per block."""
    p, end = world.params, float(world.days)
    batch = EventBatch(EVENT_TYPES, end)
    n = idx.shape[0]
    arrival = leads.arrival[idx]
    product = leads.product[idx]
    interest = leads.hidden[idx]  # hidden: drives behaviour, never written
    source = leads.source[idx]

    # --- before the form: ad clicks, searches and site sessions ----------------------------------
    ad = source == SOURCES.index("ad_campaign")
    clicks = np.where(
        ad, 1 + rng.poisson(p.ad_clicks_extra * np.exp(0.3 * interest)), rng.poisson(p.ad_clicks_other, n)
    )
    pos, k = _expand(clicks)
    campaign = np.where((k == 0) & ad[pos], rng.integers(0, 2, pos.shape[0]), 2)  # first click acquired, later retarget
    day = _sorted_within_lead(pos, arrival[pos] - 0.02 - 14 * rng.random(pos.shape[0]) ** 2)
    batch.add("ad_click", pos, day, None, AD_CLICK_JSON[product[pos], campaign])

    pos, _ = _expand(rng.poisson(np.exp(p.search_log_rate + 0.4 * interest)))
    day = arrival[pos] - 0.01 - 14 * rng.random(pos.shape[0])
    batch.add("search", pos, day, None, SEARCH_JSON[product[pos], rng.integers(0, 3, pos.shape[0])])

    visits = leads.visits[idx].astype(np.int64)
    pos, k = _expand(visits)
    starts = _sorted_within_lead(pos, arrival[pos] - 0.03 - 14 * rng.random(pos.shape[0]))
    _site_sessions(batch, rng, p.pages_log_rate, interest, product, pos, starts, k + 1, before=arrival)

    # --- the form and the lead ---------------------------------------------------------------------
    everyone = np.arange(n)
    form = [
        f"{FORM_JSON[s][pr][0]}{b!r}{FORM_JSON[s][pr][1]}"
        for s, pr, b in zip(source.tolist(), product.tolist(), leads.budget[idx].astype(float).tolist(), strict=True)
    ]
    batch.add("form_submit", everyone, arrival, None, np.array(form, dtype=object))
    batch.add("lead_created", everyone, arrival, None, LEAD_CREATED_JSON[source, product])

    # --- after the form: more sessions and searches, inquiries, newsletters and their opens ----------
    pos, k = _expand(leads.visits_after[idx])
    starts = _sorted_within_lead(pos, arrival[pos] + 0.01 + 30 * rng.random(pos.shape[0]))
    _site_sessions(batch, rng, p.pages_log_rate, interest, product, pos, starts, visits[pos] + k + 1, before=None)

    pos, _ = _expand(rng.poisson(np.exp(p.search_log_rate - 0.5 + 0.4 * interest)))
    day = arrival[pos] + 0.01 + 30 * rng.random(pos.shape[0])
    batch.add("search", pos, day, None, SEARCH_JSON[product[pos], rng.integers(0, 3, pos.shape[0])])

    pos, _ = _expand(leads.inquiries[idx])
    batch.add("message", pos, arrival[pos] + 20 * rng.random(pos.shape[0]), None, _message("inbound", "inquiry", "web"))

    closed, won = out.closed_day, out.won
    pos, k = _expand(np.full(n, p.nurture_weeks))
    sent = np.floor(arrival[pos]) + 7 * (k + 1) + 10 / 24 + 30 * MINUTE * rng.random(pos.shape[0])
    customer = won[pos] & (sent > closed[pos])  # customers leave the prospect newsletter
    pos, k, sent = pos[~customer], k[~customer], sent[~customer]
    email = has_email[pos]
    newsletter = np.where(
        email, _message("outbound", "newsletter", "email"), _message("outbound", "newsletter", "wechat")
    )
    batch.add("message", pos, sent, None, newsletter)
    opened = email & (rng.random(pos.shape[0]) < sigmoid(p.open_logit + 0.9 * interest[pos]))
    week = (k[opened] + 1).tolist()
    batch.add(
        "email_open",
        pos[opened],
        sent[opened] + rng.exponential(0.4, int(opened.sum())),
        None,
        _numbers({"kind": "newsletter", "week": 0}, "week", week),
    )

    _screening(batch, world, leads, idx, out, rng)
    _sales(batch, world, leads, idx, out, rng)
    return batch


def _site_sessions(
    batch: EventBatch,
    rng: np.random.Generator,
    log_rate: float,
    interest: np.ndarray,
    product: np.ndarray,
    lead: np.ndarray,
    starts: np.ndarray,
    number: np.ndarray,
    *,
    before: np.ndarray | None,
) -> None:
    """Page views of site sessions (one row per session): landing page first, then a few more pages."""
    pages = 1 + rng.poisson(np.exp(log_rate + 0.3 * interest[lead]))
    session, k = _expand(pages)
    owner = lead[session]
    pace = np.asarray(rng.gamma(2.0, 0.75, lead.shape[0]))[session] * MINUTE  # minutes per page, per session
    day = starts[session] + k * pace
    if before is not None:
        day = np.minimum(day, before[owner] - MINUTE / 60)  # a pre-form session ends before the form
    page = np.where(k == 0, 0, 1 + rng.choice(len(PAGE_WEIGHTS), size=k.shape[0], p=PAGE_WEIGHTS))
    paths = PAGE_PATHS[product[owner], page].tolist()
    payload = [f'{{"page":"{path}","session":{s}}}' for path, s in zip(paths, number[session].tolist(), strict=True)]
    batch.add("page_view", owner, day, None, np.array(payload, dtype=object))


def _screening(
    batch: EventBatch, world: World, leads: Leads, idx: np.ndarray, out: ChunkOutcomes, rng: np.random.Generator
) -> None:
    """The opportunity group's calls: attempts, texts after missed calls, summaries, and the verdict."""
    p = world.params
    attempts = out.attempts
    screener = out.screener
    reached = ~np.isnan(out.connected_day)
    interest = leads.hidden[idx]
    started = np.flatnonzero(attempts > 0)
    _change_stage(
        batch,
        out,
        "screening",
        started,
        out.first_call[started],
        screener[started],
        payload_json({"from": "new", "to": "screening", "reason": None, "owner_id": None}),
    )
    pos, a = _expand(attempts)
    day = out.attempt_day[pos, a]
    connected = reached[pos] & (a == attempts[pos] - 1)
    missed_kind = 1 + (leads.u_attempts[idx[pos], a] * 100).astype(np.int64) % 2  # no_answer / busy
    outcome = np.where(connected, 0, missed_kind)
    batch.add("call_attempt", pos, day, screener[pos], CALL_ATTEMPT_JSON[0, outcome])
    missed = ~connected & (rng.random(pos.shape[0]) < p.missed_call_sms)
    batch.add(
        "message",
        pos[missed],
        day[missed] + MINUTE,
        screener[pos[missed]],
        _message("outbound", "missed_call_sms", "sms"),
    )
    who = np.flatnonzero(reached)
    duration = (30 + rng.gamma(2.0, 90.0 * np.exp(0.25 * interest[who]))).astype(np.int64)
    ended = _connected_call(
        batch, who, out.connected_day[who], screener[who], duration, "screening", "screening_summary"
    )
    qualified = out.qualified[who]
    for target, mask, reason in (("qualified", qualified, None), ("lost", ~qualified, "not interested")):
        payload = payload_json({"from": "screening", "to": target, "reason": reason, "owner_id": None})
        _change_stage(batch, out, target, who[mask], ended[mask] + 3 * MINUTE, screener[who[mask]], payload)
    unreachable = np.flatnonzero(~reached & (attempts >= p.max_attempts))
    last_call = out.attempt_day[unreachable, p.max_attempts - 1]
    _change_stage(
        batch,
        out,
        "lost",
        unreachable,
        last_call + 10 * MINUTE,
        screener[unreachable],
        payload_json({"from": "screening", "to": "lost", "reason": "unreachable", "owner_id": None}),
    )


def _connected_call(
    batch: EventBatch,
    lead: np.ndarray,
    day: np.ndarray,
    actor: np.ndarray,
    duration_s: np.ndarray,
    purpose: str,
    note: str | None,
) -> np.ndarray:
    """``call_connected`` and ``call_completed`` (and the caller's note); returns when the call ended."""
    batch.add("call_connected", lead, day, actor, payload_json({"purpose": purpose}))
    ended = day + duration_s / 86400
    completed = _numbers({"purpose": purpose, "duration_s": 0}, "duration_s", duration_s.tolist())
    batch.add("call_completed", lead, ended, actor, completed)
    if note is not None:
        batch.add("note", lead, ended + 2 * MINUTE, actor, payload_json({"kind": note}))
    return ended


def _owner_stage(source: str, target: str, reason: str | None, owners: np.ndarray) -> np.ndarray:
    return _numbers({"from": source, "to": target, "reason": reason, "owner_id": 0}, "owner_id", owners.tolist())


def _sales(
    batch: EventBatch, world: World, leads: Leads, idx: np.ndarray, out: ChunkOutcomes, rng: np.random.Generator
) -> None:
    """Assignment, the owner's milestone calls, follow-ups between them, and the close."""
    p, people, end = world.params, world.people, float(world.days)
    worked = np.flatnonzero(out.rep >= 0)
    owner = out.owner[worked]
    assigned = out.assigned_day[worked]  # mornings, already in office hours
    batch.add(
        "assign",
        worked,
        assigned,
        None,
        _numbers({"from": None, "to": 0, "reason": "round_robin"}, "to", owner.tolist()),
    )
    _change_stage(
        batch,
        out,
        "assigned",
        worked,
        assigned,
        None,
        payload_json({"from": "qualified", "to": "assigned", "reason": "assign", "owner_id": None}),
    )
    i = idx[worked]
    cycle = leads.cycle_days[i]
    interest = leads.hidden[i]
    rep = out.rep[worked]
    fit = people.skill[rep, leads.product[i]] + people.affinity[rep, leads.segment[i]]  # hidden
    talk = np.exp(0.3 * fit + 0.2 * interest)  # engaged leads and well-matched owners talk longer

    # Milestones: the first connected sales call makes the lead "contacted"; a later one, with a
    # meeting and a quote, "negotiating".
    contacted_at = np.full(worked.shape[0], np.nan)  # when the lead became "contacted" (NaN: not yet)
    negotiated_at = np.full(worked.shape[0], np.nan)  # when the quote was given
    for share, previous, stage in ((0.05, "assigned", "contacted"), (0.6, "contacted", "negotiating")):
        due = office_time(assigned + share * cycle)
        live = np.flatnonzero(due < end)
        lead, at, who = worked[live], due[live], owner[live]
        batch.add("call_attempt", lead, at, who, CALL_ATTEMPT_JSON[1, 0])
        duration = (120 + rng.gamma(2.0, 240.0 * talk[live])).astype(np.int64)
        ended = _connected_call(batch, lead, at, who, duration, "sales", None)
        _change_stage(batch, out, stage, lead, ended + MINUTE, who, _owner_stage(previous, stage, None, who))
        if stage == "contacted":
            contacted_at[live] = np.where(ended + MINUTE < end, ended + MINUTE, np.nan)
        else:
            batch.add("meeting", lead, ended + 2 * MINUTE, who, payload_json({"kind": "visit"}))
            batch.add("note", lead, ended + 3 * MINUTE, who, payload_json({"kind": "meeting_summary"}))
            amount = leads.value[i[live]].astype(float).tolist()
            batch.add("quote", lead, ended + 4 * MINUTE, who, _numbers({"amount": 0.0}, "amount", amount))
            negotiated_at[live] = ended + 4 * MINUTE

    # The close comes after the quote (the history's close day, in office hours), or never.
    history_close = out.closed_day[worked]  # NaN: still open at the end
    closed = np.where(np.isnan(history_close), np.nan, np.fmax(history_close, negotiated_at + 10 * MINUTE))

    # Follow-ups from the first contact to the close (or the end): a Poisson process whose rate grows
    # with the owner's hidden fit for this lead and the lead's hidden interest.
    start = assigned + 0.05 * cycle + 0.02
    stop = np.where(np.isnan(closed), end, closed)
    window = np.where(np.isnan(contacted_at), 0.0, np.maximum(0.0, stop - start))
    rate = np.exp(p.followup_fit_gain * fit + 0.3 * interest) / p.followup_gap_days
    touch, _ = _expand(rng.poisson(rate * window))
    at = np.maximum(
        office_time(start[touch] + window[touch] * rng.random(touch.shape[0])), contacted_at[touch] + MINUTE
    )
    before_close = at < stop[touch]
    touch, at = touch[before_close], at[before_close]
    lead, who = worked[touch], owner[touch]
    answer = np.minimum(0.95, leads.p_connect[i[touch]] + 0.25)  # a lead answers its own salesperson more
    connected = rng.random(touch.shape[0]) < answer
    outcome = np.where(connected, 0, 1 + (rng.random(touch.shape[0]) < 0.3))
    batch.add("call_attempt", lead, at, who, CALL_ATTEMPT_JSON[2, outcome])
    c = np.flatnonzero(connected)
    duration = (60 + rng.gamma(2.0, 120.0 * talk[touch[c]])).astype(np.int64)
    ended = _connected_call(batch, lead[c], at[c], who[c], duration, "follow_up", None)
    noted = rng.random(c.shape[0]) < 0.8
    batch.add("note", lead[c][noted], ended[noted] + 2 * MINUTE, who[c][noted], payload_json({"kind": "call_summary"}))
    missed = np.flatnonzero(~connected & (rng.random(touch.shape[0]) < 0.7))
    batch.add("message", lead[missed], at[missed] + MINUTE, who[missed], _message("outbound", "follow_up", "wechat"))
    replies = rng.random(touch.shape[0]) < sigmoid(p.reply_logit + 0.8 * interest[touch] + 0.5 * fit[touch])
    batch.add(
        "message",
        lead[replies],
        at[replies] + 5 * MINUTE + rng.exponential(0.3, int(replies.sum())),
        None,
        _message("inbound", "reply", "wechat"),
    )

    # The close (in office hours): a signed contract and its payment three days later, or a loss.
    done = np.flatnonzero(~np.isnan(closed))
    lead, at, who = worked[done], closed[done], owner[done]
    win = out.won[lead]
    signed = _numbers({"amount": 0.0}, "amount", leads.value[i[done]][win].astype(float).tolist())
    batch.add("contract_signed", lead[win], at[win], who[win], signed)
    won_stage = _owner_stage("negotiating", "won", None, who[win])
    _change_stage(batch, out, "won", lead[win], at[win] + MINUTE, who[win], won_stage)
    batch.add("payment", lead[win], at[win] + 3, None, signed)
    lost = ~win
    _change_stage(
        batch,
        out,
        "lost",
        lead[lost],
        at[lost],
        who[lost],
        _owner_stage("negotiating", "lost", "chose a competitor", who[lost]),
    )
