"""The lead life cycle: which stage may follow which, and why a move is refused."""

from __future__ import annotations

from leadpilot.crm.models import Stage

# new → screening → qualified → assigned → contacted → negotiating → won | lost; any open stage can be
# lost; a worked lead can be recycled back to the pool, from where it is claimed or assigned again.
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.NEW: frozenset({Stage.SCREENING, Stage.LOST}),
    Stage.SCREENING: frozenset({Stage.QUALIFIED, Stage.LOST}),
    Stage.QUALIFIED: frozenset({Stage.ASSIGNED, Stage.LOST}),
    Stage.ASSIGNED: frozenset({Stage.CONTACTED, Stage.RECYCLED, Stage.LOST}),
    Stage.CONTACTED: frozenset({Stage.NEGOTIATING, Stage.RECYCLED, Stage.LOST}),
    Stage.NEGOTIATING: frozenset({Stage.WON, Stage.LOST, Stage.RECYCLED}),
    Stage.RECYCLED: frozenset({Stage.ASSIGNED, Stage.LOST}),
    Stage.WON: frozenset(),
    Stage.LOST: frozenset(),
}

# Unowned leads in these stages form the claim pool.
POOL_STAGES: frozenset[Stage] = frozenset({Stage.QUALIFIED, Stage.RECYCLED})
# Stages in which a lead must have an owner.
OWNED_STAGES: frozenset[Stage] = frozenset({Stage.ASSIGNED, Stage.CONTACTED, Stage.NEGOTIATING})
# Screeners work leads in these stages.
SCREENING_STAGES: frozenset[Stage] = frozenset({Stage.NEW, Stage.SCREENING})
TERMINAL_STAGES: frozenset[Stage] = frozenset({Stage.WON, Stage.LOST})


def transition_error(current: str, target: str) -> str | None:
    """Why the move from current to target is illegal, or None when it is allowed."""
    try:
        target_stage = Stage(target)
    except ValueError:
        return f"unknown stage {target!r}; stages are {', '.join(s.value for s in Stage)}"
    allowed = TRANSITIONS[Stage(current)]
    if target_stage in allowed:
        return None
    if not allowed:
        return f"lead is {current!r}, a final stage; it cannot move to {target!r}"
    options = ", ".join(sorted(s.value for s in allowed))
    return f"cannot move from {current!r} to {target!r}; allowed next stages: {options}"
