"""Lead search: full text over company, contact, title and notes (Chinese segmented by jieba) with filters,
ordered by relevance and the lead's score; SQLite FTS5 or PostgreSQL full text behind one interface.

The index is derived data, like a cache: one document per lead (its title, notes, product line, region, the
account's name and industry, the contact's name), tokenised in Python (lower case; runs of CJK characters cut
by ``jieba.cut_for_search``; other text split on non-word characters) so both backends index the same tokens
(FTS5 with the ``unicode61`` tokenizer, PostgreSQL with the ``simple`` configuration: no stemming, no stop
words, so Chinese and English behave alike). The backend creates its tables on first use; each search first
indexes the leads whose ``version`` differs from the indexed one (every lead write bumps it), so results never
miss a lead edited through the CRM. A changed account or contact name reaches the index at the next lead
write or ``leadpilot search reindex``.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, select, text
from sqlalchemy.orm import Session

from leadpilot.crm.access import Actor, lead_scope
from leadpilot.crm.errors import Invalid
from leadpilot.crm.models import Account, Contact, Lead

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"\w+", re.UNICODE)
_jieba_lock = threading.Lock()
MAX_QUERY_TOKENS = 20


def tokens(value: str | None) -> list[str]:
    """The index tokens of a text: lower-case words, Chinese runs segmented (with sub-words for recall)."""
    if not value:
        return []
    out: list[str] = []
    position = 0
    lowered = value.lower()
    for match in _CJK.finditer(lowered):
        out += _WORD.findall(lowered[position : match.start()])
        with _jieba_lock:  # jieba builds its dictionary lazily, once; not thread-safe while it does
            import jieba

            out += [w for w in jieba.cut_for_search(match.group()) if w.strip()]
        position = match.end()
    out += _WORD.findall(lowered[position:])
    return out


def document(row: Any) -> str:
    """One lead's searchable text, as space-separated tokens."""
    parts = [row.title, row.notes, row.product_line, row.region, row.account_name, row.industry, row.contact_name]
    return " ".join(t for part in parts for t in tokens(part))


def _query_tokens(query: str) -> list[str]:
    found = list(dict.fromkeys(tokens(query)))[:MAX_QUERY_TOKENS]
    if not found:
        raise Invalid("the search text has no words to look for", field="q")
    return found


class SearchBackend(ABC):
    """Where the index lives: create it, write documents, and match tokens with a relevance."""

    @abstractmethod
    def create(self, conn: Connection) -> None:
        """Create the index tables if they do not exist."""

    @abstractmethod
    def write(self, conn: Connection, docs: list[tuple[int, int, str]]) -> None:
        """Replace the documents of these (lead id, version, text)."""

    @abstractmethod
    def match(self, conn: Connection, words: list[str], limit: int) -> list[tuple[int, float]]:
        """(lead id, relevance > 0, higher is better) of leads holding every word, best first."""

    def stale(self, conn: Connection) -> list[int]:
        """Leads whose indexed stamp is missing or old (a lead id reused after a wipe has a new stamp too)."""
        rows = conn.execute(
            text(
                "SELECT l.id FROM leads l LEFT JOIN lead_search_meta m ON m.lead_id = l.id WHERE m.stamp IS NULL "
                "OR m.stamp <> (CAST(l.version AS TEXT) || ':' || CAST(l.created_at AS TEXT))"
            )
        )
        return [int(r[0]) for r in rows]

    def _write_meta(self, conn: Connection, docs: list[tuple[int, int, str]]) -> None:
        ids = [{"id": d[0]} for d in docs]
        conn.execute(text("DELETE FROM lead_search_meta WHERE lead_id = :id"), ids)
        conn.execute(
            text(
                "INSERT INTO lead_search_meta (lead_id, stamp) SELECT l.id, "
                "(CAST(l.version AS TEXT) || ':' || CAST(l.created_at AS TEXT)) FROM leads l WHERE l.id = :id"
            ),
            ids,
        )


# The meta table stamps each indexed lead with its version (bumped by every write) and creation time.
_META = "CREATE TABLE IF NOT EXISTS lead_search_meta (lead_id INTEGER PRIMARY KEY, stamp TEXT NOT NULL)"


class SqliteFts5(SearchBackend):
    """SQLite's FTS5 (built into Python's sqlite3); BM25 ranking."""

    def create(self, conn: Connection) -> None:
        conn.execute(text("CREATE VIRTUAL TABLE IF NOT EXISTS lead_search USING fts5(body, tokenize = 'unicode61')"))
        conn.execute(text(_META))

    def write(self, conn: Connection, docs: list[tuple[int, int, str]]) -> None:
        conn.execute(text("DELETE FROM lead_search WHERE rowid = :id"), [{"id": d[0]} for d in docs])
        conn.execute(
            text("INSERT INTO lead_search (rowid, body) VALUES (:id, :body)"),
            [{"id": d[0], "body": d[2]} for d in docs],
        )
        self._write_meta(conn, docs)

    def match(self, conn: Connection, words: list[str], limit: int) -> list[tuple[int, float]]:
        expression = " AND ".join('"' + w.replace('"', '""') + '"' for w in words)
        rows = conn.execute(
            text(
                "SELECT rowid, bm25(lead_search) AS r FROM lead_search WHERE lead_search MATCH :q ORDER BY r LIMIT :n"
            ),
            {"q": expression, "n": limit},
        )
        return [(int(i), float(-r)) for i, r in rows]  # bm25: lower is better


class PostgresFullText(SearchBackend):
    """PostgreSQL ``tsvector`` with a GIN index, ``simple`` configuration, ``ts_rank`` ordering."""

    def create(self, conn: Connection) -> None:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS lead_search (lead_id INTEGER PRIMARY KEY, "
                "body TEXT NOT NULL, tsv TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED)"
            )
        )
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_lead_search_tsv ON lead_search USING GIN (tsv)"))
        conn.execute(text(_META))

    def write(self, conn: Connection, docs: list[tuple[int, int, str]]) -> None:
        conn.execute(
            text(
                "INSERT INTO lead_search (lead_id, body) VALUES (:id, :body) "
                "ON CONFLICT (lead_id) DO UPDATE SET body = EXCLUDED.body"
            ),
            [{"id": d[0], "body": d[2]} for d in docs],
        )
        self._write_meta(conn, docs)

    def match(self, conn: Connection, words: list[str], limit: int) -> list[tuple[int, float]]:
        rows = conn.execute(
            text(
                "SELECT lead_id, ts_rank(tsv, q) AS r FROM lead_search, "
                "to_tsquery('simple', :q) q WHERE tsv @@ q ORDER BY r DESC LIMIT :n"
            ),
            {"q": " & ".join("'" + w.replace("'", "''").replace("\\", "") + "'" for w in words), "n": limit},
        )
        return [(int(i), float(r)) for i, r in rows]


def backend_for(conn: Connection) -> SearchBackend:
    """The backend of this database."""
    return PostgresFullText() if conn.dialect.name == "postgresql" else SqliteFts5()


def _documents(session: Session, lead_ids: list[int]) -> list[tuple[int, int, str]]:
    docs: list[tuple[int, int, str]] = []
    for start in range(0, len(lead_ids), 5_000):
        rows = session.execute(
            select(
                Lead.id,
                Lead.version,
                Lead.title,
                Lead.notes,
                Lead.product_line,
                Lead.region,
                Account.name.label("account_name"),
                Account.industry,
                Contact.name.label("contact_name"),
            )
            .outerjoin(Account, Account.id == Lead.account_id)
            .outerjoin(Contact, Contact.id == Lead.contact_id)
            .where(Lead.id.in_(lead_ids[start : start + 5_000]))
        )
        docs += [(r.id, r.version, document(r)) for r in rows]
    return docs


def sync_index(session: Session, *, full: bool = False) -> int:
    """Index the leads that changed since they were indexed (all with ``full``); returns how many."""
    conn = session.connection()
    backend = backend_for(conn)
    backend.create(conn)
    ids = [int(i) for i in session.scalars(select(Lead.id))] if full else backend.stale(conn)
    for start in range(0, len(ids), 5_000):
        docs = _documents(session, ids[start : start + 5_000])
        if docs:
            backend.write(conn, docs)
    return len(ids)


@dataclass
class SearchHit:
    """A lead found, with why it ranks where it does."""

    lead: Lead
    relevance: float
    rank: float


def search(
    session: Session,
    *,
    actor: Actor,
    q: str,
    stage: Sequence[str] | None = None,
    product_line: str | None = None,
    region: str | None = None,
    score_min: float | None = None,
    score_max: float | None = None,
    limit: int = 20,
) -> list[SearchHit]:
    """Leads the actor may see that hold every word of ``q``, filtered, best first.

    Rank = relevance (normalised to the best hit) × (0.5 + 0.5 × the lead's score): among equally relevant
    leads the likelier to convert comes first; a lead without a score counts as 0.5.
    """
    words = _query_tokens(q)
    if not 1 <= limit <= 200:
        raise Invalid("limit must be between 1 and 200", field="limit")
    sync_index(session)
    candidates = backend_for(session.connection()).match(session.connection(), words, limit=max(limit * 20, 500))
    if not candidates:
        return []
    relevance = dict(candidates)
    clauses = [Lead.id.in_(list(relevance)), lead_scope(actor, stages=stage)]
    if product_line is not None:
        clauses.append(Lead.product_line == product_line)
    if region is not None:
        clauses.append(Lead.region == region)
    if score_min is not None:
        clauses.append(Lead.score >= score_min)
    if score_max is not None:
        clauses.append(Lead.score <= score_max)
    found = list(session.scalars(select(Lead).where(and_(*clauses))))
    best = max((relevance[lead.id] for lead in found), default=1.0) or 1.0
    hits = [
        SearchHit(
            lead,
            relevance[lead.id],
            (relevance[lead.id] / best) * (0.5 + 0.5 * (lead.score if lead.score is not None else 0.5)),
        )
        for lead in found
    ]
    hits.sort(key=lambda h: (-h.rank, h.lead.id))
    return hits[:limit]
