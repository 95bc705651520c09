"""Model registry: every trained scoring model is a version; one champion per name serves, the rest wait or retire.

A version's files live in ``<data dir>/models/<name>/v<version>/`` (the model directory written by
``pipeline.ScoringModel.save``); its row in ``model_versions`` holds what it was trained on and how well it
did, beside its baselines. Promotion, rollback and challenger marks are events in the log.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from leadpilot.crm.access import Actor
from leadpilot.crm.audit import audit
from leadpilot.crm.errors import Conflict, NotFound
from leadpilot.crm.events import append_event
from leadpilot.db.base import utcnow
from leadpilot.models.tables import ModelStatus, ModelVersion

MODEL_PROMOTED = "model_promoted"
MODEL_REGISTERED = "model_registered"


def models_dir(data_dir: Path) -> Path:
    """Where registered model directories are kept."""
    return Path(data_dir) / "models"


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def register(
    session: Session,
    *,
    actor: Actor,
    name: str,
    source: Path,
    data_dir: Path,
    meta: dict[str, Any],
    status: ModelStatus = ModelStatus.CANDIDATE,
    notes: str = "",
) -> ModelVersion:
    """Copy a saved model directory into the registry as the next version of ``name`` (flushed, not committed).

    ``meta`` is the model's ``meta.json``: schema fingerprint, data range, feature names, parameters,
    metrics and baseline metrics. The copy is made before the row is written; if the transaction then
    fails, the orphan directory is removed so no partial model stays registered.
    """
    version = (session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0) + 1
    target = models_dir(data_dir) / name / f"v{version}"
    if target.exists():  # left by a crash between copy and commit: the database does not know it
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)
    data_range = meta.get("data_range") or {}
    try:
        row = ModelVersion(
            name=name,
            version=version,
            status=status.value,
            path=str(target),
            schema_fingerprint=str(meta.get("schema_fingerprint", "")),
            data_from=_parse_time(data_range.get("from")),
            data_to=_parse_time(data_range.get("to")),
            n_train=int(data_range.get("n_train") or meta.get("n_train") or 0),
            n_test=int(data_range.get("n_test") or meta.get("n_test") or 0),
            features=list(meta.get("feature_names") or []),
            params=dict(meta.get("params") or {}),
            metrics=dict(meta.get("metrics") or {}),
            baseline_metrics=dict(meta.get("baseline_metrics") or {}),
            created_by_id=actor.id,
            notes=notes,
        )
        session.add(row)
        session.flush()
        append_event(
            session,
            MODEL_REGISTERED,
            actor_id=actor.id,
            payload={"model": name, "version": version, "auc": row.metrics.get("auc")},
        )
        audit(session, actor, "create", "model_version", row.id, {"name": name, "version": version})
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return row


def list_versions(session: Session, *, name: str | None = None) -> list[ModelVersion]:
    """Registered versions, newest first (all names, or one)."""
    stmt = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version.desc())
    if name is not None:
        stmt = stmt.where(ModelVersion.name == name)
    return list(session.scalars(stmt))


def get_version(session: Session, *, name: str, version: int) -> ModelVersion:
    """One version of a model, or NotFound naming what exists."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
    if row is None:
        known = [f"v{v.version}" for v in list_versions(session, name=name)]
        raise NotFound(f"model {name!r} has no version {version} (registered: {', '.join(known) or 'none'})")
    return row


def champion(session: Session, *, name: str) -> ModelVersion | None:
    """The version of ``name`` that serves, if any."""
    return session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.status == ModelStatus.CHAMPION.value)
    )


def promote(session: Session, *, actor: Actor, name: str, version: int, reason: str = "manual") -> ModelVersion:
    """Make ``version`` the champion of ``name``; the previous champion is archived (kept for rollback)."""
    row = get_version(session, name=name, version=version)
    if row.status == ModelStatus.CHAMPION.value:
        raise Conflict(f"model {name} v{version} is already the champion")
    previous = champion(session, name=name)
    if previous is not None:
        previous.status = ModelStatus.ARCHIVED.value
        session.flush()  # one champion at a time, even inside the transaction
    row.status = ModelStatus.CHAMPION.value
    row.promoted_at = utcnow()
    session.flush()
    append_event(
        session,
        MODEL_PROMOTED,
        actor_id=actor.id,
        payload={
            "model": name,
            "version": version,
            "previous": previous.version if previous else None,
            "reason": reason,
        },
    )
    audit(session, actor, "promote", "model_version", row.id, {"name": name, "version": version, "reason": reason})
    return row


def rollback(session: Session, *, actor: Actor, name: str) -> ModelVersion:
    """Give the champion role back to the version that held it before the current champion."""
    current = champion(session, name=name)
    if current is None:
        if not list_versions(session, name=name):
            raise NotFound(f"no model named {name!r} is registered")
        raise Conflict(f"model {name!r} has no champion to roll back from")
    earlier = session.scalar(
        select(ModelVersion)
        .where(
            ModelVersion.name == name,
            ModelVersion.promoted_at.is_not(None),
            ModelVersion.id != current.id,
            ModelVersion.status == ModelStatus.ARCHIVED.value,
        )
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1)
    )
    if earlier is None:
        raise Conflict(f"model {name!r} v{current.version} is the first champion: nothing to roll back to")
    return promote(session, actor=actor, name=name, version=earlier.version, reason=f"rollback from v{current.version}")


def mark_challenger(session: Session, *, actor: Actor, name: str, version: int) -> ModelVersion:
    """Mark a version as the challenger (evaluated beside the champion; at most one per name)."""
    row = get_version(session, name=name, version=version)
    if row.status == ModelStatus.CHAMPION.value:
        raise Conflict(f"model {name} v{version} is the champion; it cannot also be the challenger")
    for other in session.scalars(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.status == ModelStatus.CHALLENGER.value)
    ):
        other.status = ModelStatus.CANDIDATE.value
    row.status = ModelStatus.CHALLENGER.value
    session.flush()
    audit(session, actor, "challenge", "model_version", row.id, {"name": name, "version": version})
    return row


def version_json(row: ModelVersion) -> dict[str, Any]:
    """A version as plain data for the CLI and the API."""
    return {
        "id": row.id,
        "name": row.name,
        "version": row.version,
        "status": row.status,
        "path": row.path,
        "schema_fingerprint": row.schema_fingerprint,
        "data_from": row.data_from.isoformat() if row.data_from else None,
        "data_to": row.data_to.isoformat() if row.data_to else None,
        "n_train": row.n_train,
        "n_test": row.n_test,
        "features": len(row.features),
        "params": row.params,
        "metrics": row.metrics,
        "baseline_metrics": row.baseline_metrics,
        "created_at": row.created_at.isoformat(),
        "promoted_at": row.promoted_at.isoformat() if row.promoted_at else None,
        "notes": row.notes,
    }
