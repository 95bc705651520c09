"""The workflow engine on SQLite and PostgreSQL: rule validation, cycles, timers, idempotency, webhooks, kill -9."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from leadpilot.crm import eventlog, schemas, tasks
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.events import append_events_bulk
from leadpilot.crm.models import Event, Task
from leadpilot.db.base import utcnow
from leadpilot.db.engine import read_only_engine
from leadpilot.workflow import engine as wf
from leadpilot.workflow import service
from leadpilot.workflow.rules import WorkflowError, dump_yaml, load_yaml
from leadpilot.workflow.tables import WebhookDelivery, WorkflowFiring, WorkflowNotification, WorkflowTimer
from leadpilot.workflow.webhooks import deliver_due
from tests.conftest import Org

REPO = Path(__file__).resolve().parents[2]

ESCALATE = """
rules:
  - name: escalate
    enabled: true
    trigger: call_completed
    condition: "stage in ['assigned', 'contacted']"
    after: 24h
    unless: [call_attempt, call_completed, message]
    actions:
      - notify: {to: supervisor, message: "Lead {lead_id} ({title}) had no follow-up in 24 h"}
      - create_task: {assignee: supervisor, title: "Escalation: lead {lead_id}", due_in: 4h}
"""


def _import(engine: Engine, text: str, **kw: Any) -> dict[str, list[str]]:
    with Session(engine) as s:
        out = service.import_yaml(s, actor=SYSTEM, text=text, **kw)
        s.commit()
    return out


def _activity(engine: Engine, org: Org, lead: str, type_: str, at: Any, actor: str = "alice") -> int:
    with Session(engine) as s:
        ev = eventlog.record_activity(
            s,
            actor=org.actor(actor),
            data=schemas.EventCreate(type=type_, lead_id=org.leads[lead], occurred_at=at, payload={}),
        )
        s.commit()
        return ev.id


def _events(engine: Engine, type_: str) -> list[Event]:
    with Session(engine) as s:
        return list(s.scalars(select(Event).where(Event.type == type_).order_by(Event.id)))


def _fired_per_trigger(engine: Engine) -> Counter[str]:
    return Counter(e.payload["trigger_key"] for e in _events(engine, "workflow_fired"))


# --- rule files: every problem names the rule and the bad part ---------------------------------------


def test_yaml_errors_name_the_rule_and_the_bad_part() -> None:
    bad = """
rules:
  - name: r1
    trigger: call_complete
    condition: "stage == 'new' and"
    after: 24 hours
    actions:
      - notifyy: {to: owner}
  - name: r2
    trigger: note
    condition: "budgett > 10"
    actions:
      - change_stage: {stage: finished}
      - webhook: {url: "ftp://example", timeout: 500}
"""
    with pytest.raises(WorkflowError) as info:
        load_yaml(bad)
    problems = info.value.problems
    text = "\n".join(problems)
    assert "rule 'r1': trigger: unknown event type 'call_complete'; did you mean call_completed" in text
    assert "rule 'r1': condition: syntax error at column" in text
    assert "rule 'r1': after: bad delay '24 hours'" in text
    assert "rule 'r1': actions[0]: unknown action 'notifyy'" in text and "did you mean notify?" in text
    assert "rule 'r2': condition: unknown name 'budgett'" in text
    assert "rule 'r2': actions[0] change_stage.stage: unknown stage 'finished'" in text
    assert "rule 'r2': actions[1] webhook.url" in text and "rule 'r2': actions[1] webhook.timeout" in text
    with pytest.raises(WorkflowError, match=r"YAML syntax error at line \d+, column \d+: expected"):
        load_yaml("rules:\n  - name: x\n    trigger: [note\n")
    with pytest.raises(WorkflowError, match=r"rule 'x': unless: needs a delay"):
        load_yaml("rules: [{name: x, trigger: note, unless: [message], actions: [{notify: {message: hi}}]}]")
    # A valid file round-trips through export.
    rules = load_yaml(ESCALATE)
    assert [r.to_dict() for r in load_yaml(dump_yaml(rules))] == [r.to_dict() for r in rules]


def test_import_export_enable_and_unknown_references(engine: Engine, org: Org) -> None:
    with pytest.raises(WorkflowError, match=r"rule 'a': actions\[0\] assign: no team named 'nowhere'"):
        _import(engine, "rules: [{name: a, enabled: true, trigger: note, actions: [{assign: {team: nowhere}}]}]")
    assert _import(engine, ESCALATE)["created"] == ["escalate"]
    assert _import(engine, ESCALATE)["unchanged"] == ["escalate"]
    with Session(engine) as s:
        service.set_enabled(s, actor=SYSTEM, name="escalate", enabled=False)
        s.commit()
        exported = service.export_yaml(s)
        assert [r["enabled"] for r in service.list_rules(s)] == [False]
        assert service.install_defaults(s, actor=SYSTEM)["created"] == ["escalate-no-follow-up", "hot-lead-to-sales"]
        s.commit()
    assert "enabled: false" in exported and load_yaml(exported)[0].name == "escalate"


# --- cycles: rejected on save, stopped at run time ------------------------------------------------------

CYCLE = """
rules:
  - name: ping
    enabled: true
    trigger: task_created
    actions: [{notify: {to: owner, message: "task on {lead_id}"}}]
  - name: pong
    enabled: true
    trigger: notification
    actions: [{create_task: {assignee: owner, title: "again {lead_id}"}}]
"""


def test_cycle_rejected_on_save_and_stopped_at_run_time(engine: Engine, org: Org) -> None:
    with pytest.raises(WorkflowError, match=r"rule cycle ping -> pong -> ping \(ping writes notification"):
        _import(engine, CYCLE)
    with Session(engine) as s:
        assert service.list_rules(s) == []  # nothing saved from a rejected file
    _import(engine, CYCLE, check_cycles=False)  # forced in: the run-time guard must stop it
    with Session(engine) as s:
        tasks.create_task(
            s, actor=org.actor("alice"), data=schemas.TaskCreate(title="first", lead_id=org.leads["alice"])
        )
        s.commit()
    for _ in range(6):
        wf.run_once(engine, config=wf.EngineConfig(settle_seconds=0))
    with Session(engine) as s:
        firings = s.execute(select(WorkflowFiring.status, func.count()).group_by(WorkflowFiring.status)).all()
    assert dict(firings) == {"fired": 2, "stopped": 1}
    stopped = _events(engine, "workflow_stopped")
    assert len(stopped) == 1 and "cycle: ping -> pong -> ping" in stopped[0].payload["reason"]
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Task)) == 2  # the first task and pong's one


# --- timers: "no follow-up within 24 h after a call -> escalate to the supervisor" -----------------------


def test_no_follow_up_within_24h_escalates_to_the_supervisor(engine: Engine, org: Org) -> None:
    _import(engine, ESCALATE)
    t0 = utcnow() - timedelta(hours=30)
    _activity(engine, org, "alice", "call_completed", t0)
    _activity(engine, org, "bob", "call_completed", t0, actor="bob")
    _activity(engine, org, "bob", "message", t0 + timedelta(hours=3), actor="bob")  # bob followed up
    assert wf.scan_events(engine) == 2  # one timer per call; the message triggers nothing
    with Session(engine) as s:
        assert wf.timer_counts(s, now=t0 + timedelta(hours=23))["waiting"] == 2
    early = wf.run_due(engine, now=t0 + timedelta(hours=23, minutes=59))
    assert early.fired == 0 and early.skipped == 0
    due = wf.run_due(engine, now=t0 + timedelta(hours=24, seconds=1))
    assert (due.fired, due.skipped) == (1, 1), due
    sup = org.users["sup_east"].id
    with Session(engine) as s:
        notes = list(s.scalars(select(WorkflowNotification)))
        assert [(n.user_id, n.lead_id) for n in notes] == [(sup, org.leads["alice"])]
        assert "had no follow-up in 24 h" in notes[0].message
        task = s.scalars(select(Task).where(Task.assignee_id == sup)).one()
        assert task.lead_id == org.leads["alice"] and task.due_at is not None
        reasons = sorted(f.detail.get("reason", "") for f in s.scalars(select(WorkflowFiring)))
    assert any(r.startswith("unless: message") for r in reasons)
    fired = _events(engine, "workflow_fired")
    assert len(fired) == 1 and fired[0].lead_id == org.leads["alice"]
    assert fired[0].payload["rule"] == "escalate"
    # Running again fires nothing twice.
    assert wf.run_due(engine, now=t0 + timedelta(hours=48)).fired == 0


# --- idempotency: two workers racing ---------------------------------------------------------------------

NOTIFY_ON_NOTE = """
rules:
  - name: note-alert
    enabled: true
    trigger: note
    actions: [{notify: {to: supervisor, message: "note on {lead_id}"}}]
"""


def _notes(engine: Engine, org: Org, n: int, lead: str = "alice") -> None:
    with Session(engine) as s:
        append_events_bulk(s, [{"type": "note", "lead_id": org.leads[lead], "payload": {"i": i}} for i in range(n)])
        s.commit()


def test_two_racing_workers_fire_each_timer_once(engine: Engine, org: Org) -> None:
    _import(engine, NOTIFY_ON_NOTE)
    n = 300
    _notes(engine, org, n)
    assert wf.scan_events(engine) == n
    assert wf.scan_events(engine) == 0  # scheduling is idempotent
    results: list[wf.BatchResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)  # both claim from the first batch on (else one may take all on an idle machine)

    def work(name: str) -> None:
        try:
            start.wait(10)
            results.append(wf.run_due(engine, worker=name, config=wf.EngineConfig(batch_size=10)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sum(r.fired for r in results) == n
    if engine.dialect.name == "postgresql":  # SKIP LOCKED: both claim side by side
        assert all(r.fired > 0 for r in results), [r.fired for r in results]
    # SQLite serialises writers and its busy handler may let one worker take every batch: exactly-once is what
    # holds there (below), whoever fired.
    counts = _fired_per_trigger(engine)
    assert len(counts) == n and set(counts.values()) == {1}
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(WorkflowNotification)) == n
        assert wf.timer_counts(s)["done"] == n


def test_expired_lease_is_reclaimed_and_a_late_worker_cannot_fire_twice(engine: Engine, org: Org) -> None:
    _import(engine, NOTIFY_ON_NOTE)
    _notes(engine, org, 10)
    wf.scan_events(engine)
    now = utcnow()
    slow = wf.claim_due(engine, worker="slow", now=now, batch=10, lease_seconds=5)
    assert len(slow) == 10
    assert wf.claim_due(engine, worker="fast", now=now, batch=10) == []  # leased
    fast = wf.claim_due(engine, worker="fast", now=now + timedelta(seconds=6), batch=10)  # the lease ran out
    assert fast == slow
    assert wf.fire_claimed(engine, fast, worker="fast").fired == 10
    assert wf.fire_claimed(engine, slow, worker="slow").fired == 0  # no longer its timers
    assert set(_fired_per_trigger(engine).values()) == {1}


# --- webhooks --------------------------------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    plan: list[int | float] = []  # status codes to answer in turn; a float means sleep that long first
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(dict(self.headers))
        step = type(self).plan.pop(0) if type(self).plan else 200
        if isinstance(step, float):
            time.sleep(step)
            step = 200
        try:
            self.send_response(step)
            self.end_headers()
            self.wfile.write(b"ok" if step < 300 else b"boom")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.plan, _Receiver.seen = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def _webhook_rule(url: str, timeout: str, attempts: int) -> str:
    return f"""
rules:
  - name: hook
    enabled: true
    trigger: note
    actions: [{{webhook: {{url: "{url}", timeout: {timeout}, max_attempts: {attempts}}}}}]
"""


def test_webhook_failing_twice_is_retried_with_backoff_and_recorded(engine: Engine, org: Org, receiver: str) -> None:
    _import(engine, _webhook_rule(receiver, "2s", 5))
    _notes(engine, org, 1)
    assert wf.scan_events(engine) == 1
    assert wf.run_due(engine).fired == 1  # the firing only queues the call (outbox), in its transaction
    _Receiver.plan = [500, 503, 200]
    t0 = utcnow()
    assert deliver_due(engine, now=t0, backoff_seconds=10) == {"delivered": 0, "retrying": 1, "failed": 0}
    assert deliver_due(engine, now=t0 + timedelta(seconds=9)) == {"delivered": 0, "retrying": 0, "failed": 0}
    assert deliver_due(engine, now=t0 + timedelta(seconds=10), backoff_seconds=10)["retrying"] == 1
    with Session(engine) as s:
        row = s.scalars(select(WebhookDelivery)).one()
        assert row.next_attempt_at == t0 + timedelta(seconds=10 + 20)  # 10 s, then 20 s: doubling
    assert deliver_due(engine, now=t0 + timedelta(seconds=30), backoff_seconds=10)["delivered"] == 1
    with Session(engine) as s:
        row = s.scalars(select(WebhookDelivery)).one()
        assert row.status == "delivered" and row.attempts == 3
        assert [h["status_code"] for h in row.history] == [500, 503, 200]
        assert "HTTP 500" in row.history[0]["error"]
    keys = {h.get("Idempotency-Key") for h in _Receiver.seen}
    assert len(_Receiver.seen) == 3 and keys == {f"leadpilot-webhook-{row.id}"}
    assert len(_events(engine, "webhook_delivered")) == 1


def test_timing_out_webhook_ends_failed_with_a_clear_error(engine: Engine, org: Org, receiver: str) -> None:
    _import(engine, _webhook_rule(receiver, "1s", 2))
    _notes(engine, org, 1)
    _Receiver.plan = [2.0, 2.0]
    t0 = utcnow()
    summary = wf.run_once(engine, now=t0, config=wf.EngineConfig(settle_seconds=0))
    assert summary["fired"] == 1 and summary["webhooks"]["retrying"] == 1
    assert deliver_due(engine, now=t0 + timedelta(hours=1))["failed"] == 1
    with Session(engine) as s:
        row = s.scalars(select(WebhookDelivery)).one()
        assert row.status == "failed" and row.attempts == 2
        assert row.last_error == "gave up after 2 attempt(s); last: timed out after 1 s"
        assert row.payload["lead"]["id"] == org.leads["alice"]  # the payload is kept: nothing lost
        assert s.scalar(select(func.count()).select_from(WorkflowFiring)) == 1
    failed = _events(engine, "webhook_failed")
    assert len(failed) == 1 and "timed out" in failed[0].payload["error"]


# --- kill -9 mid-batch, then restart ---------------------------------------------------------------------

_WORKER = """
import sys
from leadpilot.db.engine import make_engine
from leadpilot.workflow import engine as wf
eng = make_engine(sys.argv[1])
wf.run_due(eng, worker="doomed", config=wf.EngineConfig(batch_size=int(sys.argv[2]), lease_seconds=2))
"""


def test_kill_9_mid_batch_then_restart_fires_every_timer_exactly_once(engine: Engine, org: Org) -> None:
    _import(engine, NOTIFY_ON_NOTE)
    n = 2000
    _notes(engine, org, n)
    assert wf.scan_events(engine) == n
    url = engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    reader = read_only_engine(engine)
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, url, "50"], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with Session(reader) as s:  # a deferred (read-only) transaction: never holds up the worker
                done = s.scalar(select(func.count()).select_from(WorkflowFiring)) or 0
                running = s.scalar(select(func.count()).where(WorkflowTimer.status == "running")) or 0
            if done > 0 and running > 0:
                break
            assert proc.poll() is None, "the worker finished before it could be killed; make the run longer"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    with Session(engine) as s:
        fired_at_kill = s.scalar(select(func.count()).select_from(WorkflowFiring)) or 0
        stuck = s.scalar(select(func.count()).where(WorkflowTimer.status == "running")) or 0
    assert 0 < fired_at_kill < n and stuck > 0  # killed mid-run, with a claimed batch in flight
    # A restarted worker picks up the rest, and the killed worker's batch once its lease runs out.
    result = wf.run_due(engine, worker="restarted", now=utcnow() + timedelta(seconds=3))
    assert result.fired == n - fired_at_kill and result.duplicates == 0
    counts = _fired_per_trigger(engine)
    assert len(counts) == n and set(counts.values()) == {1}
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(WorkflowNotification)) == n
        assert wf.timer_counts(s)["done"] == n


# --- the shipped "hot lead" rule, fired in-process by the subscriber; a failing action ------------------


def test_hot_lead_rule_assigns_to_the_team_and_queues_a_call_via_the_subscriber(engine: Engine, org: Org) -> None:
    from leadpilot.crm import people
    from leadpilot.crm.events import append_event
    from leadpilot.crm.models import Role, TeamKind

    with Session(engine) as s:
        team = people.create_team(
            s,
            actor=SYSTEM,
            data=schemas.TeamCreate(name="high-priority sales", kind=TeamKind.SALES, parent_id=org.teams["sales"]),
        )
        hp = people.create_user(
            s, actor=SYSTEM, data=schemas.UserCreate(username="hp", password="x" * 12, role=Role.SALES, team_id=team.id)
        )
        s.commit()
        hp_id = hp.id
        service.install_defaults(s, actor=SYSTEM, enable=True)
        s.commit()
    unsubscribe = wf.install_subscriber(engine)
    try:
        with Session(engine) as s:
            append_event(s, "score_changed", lead_id=org.leads["pool"], payload={"score": 0.93})
            append_event(s, "score_changed", lead_id=org.leads["pool2"], payload={"score": 0.42})
            s.commit()  # the subscriber schedules and fires right after this commit
    finally:
        unsubscribe()
    with Session(engine) as s:
        from leadpilot.crm.models import Lead

        hot, cold = s.get_one(Lead, org.leads["pool"]), s.get_one(Lead, org.leads["pool2"])
        assert (hot.owner_id, hot.stage) == (hp_id, "assigned")
        assert cold.owner_id is None
        call = s.scalars(select(Task).where(Task.kind == "call")).one()
        assert (call.lead_id, call.assignee_id) == (hot.id, hp_id)
    enqueued = _events(engine, "call_enqueued")
    assert len(enqueued) == 1 and enqueued[0].payload["priority"] == "high"
    assert enqueued[0].payload["workflow"] == {"rule": "hot-lead-to-sales", "chain": ["hot-lead-to-sales"]}
    assert [e.payload["rule"] for e in _events(engine, "workflow_fired")] == ["hot-lead-to-sales"]


def test_a_failing_action_fails_its_firing_with_the_reason_and_writes_nothing_else(engine: Engine, org: Org) -> None:
    _import(
        engine,
        """
rules:
  - name: win-on-note
    enabled: true
    trigger: note
    actions:
      - notify: {to: owner, message: "won {lead_id}"}
      - change_stage: {stage: won}
""",
    )
    _notes(engine, org, 1)
    result = wf.run_once(engine, config=wf.EngineConfig(settle_seconds=0))
    assert result["failed"] == 1 and "cannot move from 'assigned' to 'won'" in result["errors"][0]
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(WorkflowNotification)) == 0  # rolled back with the firing
        firing = s.scalars(select(WorkflowFiring)).one()
        assert firing.status == "failed" and "allowed next stages" in firing.detail["error"]
        assert wf.timer_counts(s)["failed"] == 1
    assert len(_events(engine, "workflow_failed")) == 1 and _events(engine, "notification") == []


def test_deadline_from_the_event_fires_before_it_unless_the_task_was_updated(engine: Engine, org: Org) -> None:
    _import(
        engine,
        """
rules:
  - name: task-due-soon
    enabled: true
    trigger: task_created
    at: payload.due_at
    after: -1h
    unless: [task_updated]
    unless_same: task_id
    actions: [{notify: {to: owner, message: "a task on lead {lead_id} is due in an hour"}}]
""",
    )
    now = utcnow()
    due = now + timedelta(hours=5)
    alice = org.actor("alice")
    with Session(engine) as s:
        for title in ("open", "done"):
            tasks.create_task(
                s, actor=alice, data=schemas.TaskCreate(title=title, lead_id=org.leads["alice"], due_at=due)
            )
        s.commit()
        done = s.scalars(select(Task).where(Task.title == "done")).one()
        tasks.update_task(s, actor=alice, task_id=done.id, data=schemas.TaskUpdate(status="done"))
        s.commit()
    assert wf.scan_events(engine) == 2
    assert wf.run_due(engine, now=due - timedelta(hours=1, seconds=1)).fired == 0
    result = wf.run_due(engine, now=due - timedelta(hours=1))
    assert (result.fired, result.skipped) == (1, 1)
    with Session(engine) as s:
        note = s.scalars(select(WorkflowNotification)).one()
        assert note.user_id == org.users["alice"].id and "due in an hour" in note.message


# --- the CLI ---------------------------------------------------------------------------------------------


def test_cli_import_validate_export_list_enable_run_and_timers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from leadpilot.cli.main import app
    from leadpilot.config import get_settings
    from leadpilot.db.engine import _cached_engine

    monkeypatch.setenv("LEADPILOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LEADPILOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()
    _cached_engine.cache_clear()
    runner = CliRunner()
    try:
        assert runner.invoke(app, ["init"]).exit_code == 0
        bad = tmp_path / "bad.yaml"
        bad.write_text("rules:\n  - name: bad\n    trigger: call_complete\n    after: 2 days\n    actions: [notify]\n")
        result = runner.invoke(app, ["workflow", "validate", str(bad), "--json"])
        assert result.exit_code == 2
        problems = json.loads(result.stdout)["problems"]
        assert any("rule 'bad': trigger: unknown event type 'call_complete'" in p for p in problems)
        assert any("rule 'bad': after: bad delay '2 days'" in p for p in problems)
        assert runner.invoke(app, ["workflow", "import", str(bad)]).exit_code == 2
        good = tmp_path / "good.yaml"
        good.write_text(NOTIFY_ON_NOTE)
        result = runner.invoke(app, ["workflow", "import", str(good), "--json"])
        assert result.exit_code == 0 and json.loads(result.stdout)["created"] == ["note-alert"]
        assert runner.invoke(app, ["workflow", "defaults"]).exit_code == 0
        listed = json.loads(runner.invoke(app, ["workflow", "list", "--json"]).stdout)
        assert [(r["name"], r["enabled"]) for r in listed] == [
            ("escalate-no-follow-up", False),
            ("hot-lead-to-sales", False),
            ("note-alert", True),
        ]
        result = runner.invoke(app, ["workflow", "enable", "hot-lead-to-sales"])
        assert result.exit_code == 2 and "no team named 'high-priority sales'" in result.output
        assert runner.invoke(app, ["workflow", "disable", "note-alert"]).exit_code == 0
        exported = runner.invoke(app, ["workflow", "export", "--name", "note-alert"]).stdout
        assert load_yaml(exported)[0].enabled is False
        summary = json.loads(runner.invoke(app, ["workflow", "run", "--once", "--json"]).stdout)
        assert summary["fired"] == 0 and summary["webhooks"] == {"delivered": 0, "retrying": 0, "failed": 0}
        timers = json.loads(runner.invoke(app, ["workflow", "timers", "--json"]).stdout)
        assert timers["due"] == 0 and timers["done"] == 0
    finally:
        get_settings.cache_clear()
        _cached_engine.cache_clear()
