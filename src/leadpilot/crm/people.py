"""Service functions for teams and users."""

from __future__ import annotations

from sqlalchemy import select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from leadpilot.auth.security import hash_password
from leadpilot.crm import schemas
from leadpilot.crm.access import Actor, can_manage_user, team_subtree, user_scope
from leadpilot.crm.audit import audit
from leadpilot.crm.common import apply_changes, get_visible, redact, require_exists
from leadpilot.crm.errors import Conflict, Forbidden, NotFound
from leadpilot.crm.listing import Page, paginate, sort_keys
from leadpilot.crm.models import Role, Team, User

TEAM_SORT = sort_keys(Team.id, Team.name, Team.created_at)
USER_SORT = sort_keys(User.id, User.username, User.created_at, User.daily_capacity)
# Fields a supervisor may change on users of their subtree; role and team stay with admins.
SUPERVISOR_USER_FIELDS = frozenset(
    {"full_name", "product_lines", "regions", "daily_capacity", "work_start", "work_end", "time_zone", "is_active"}
)


def _require_admin(actor: Actor, what: str) -> None:
    if not actor.is_admin:
        raise Forbidden(f"only an admin may {what}")


def _check_team(session: Session, team_id: int | None, field: str = "team_id") -> None:
    require_exists(session, Team, team_id, field)


# --- teams -------------------------------------------------------------------------------------


def list_teams(
    session: Session,
    *,
    actor: Actor,
    kind: str | None = None,
    parent_id: int | None = None,
    sort: str = "name",
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Team]:
    """Teams (every signed-in user may see the org chart)."""
    stmt = select(Team)
    if kind:
        stmt = stmt.where(Team.kind == kind)
    if parent_id is not None:
        stmt = stmt.where(Team.parent_id == parent_id)
    return paginate(session, stmt, model=Team, sortable=TEAM_SORT, sort=sort, cursor=cursor, limit=limit)


def get_team(session: Session, *, actor: Actor, team_id: int) -> Team:
    """One team."""
    return get_visible(session, Team, team_id, true())


def create_team(session: Session, *, actor: Actor, data: schemas.TeamCreate) -> Team:
    """Create a team (admins)."""
    _require_admin(actor, "create teams")
    _check_team(session, data.parent_id, "parent_id")
    if session.scalar(select(Team.id).where(Team.name == data.name)) is not None:
        raise Conflict(f"a team named {data.name!r} already exists", field="name")
    team = Team(name=data.name, kind=data.kind.value, parent_id=data.parent_id)
    session.add(team)
    session.flush()
    audit(session, actor, "create", "team", team.id, {"name": team.name})
    return team


def update_team(session: Session, *, actor: Actor, team_id: int, data: schemas.TeamUpdate) -> Team:
    """Rename, re-kind or move a team (admins); moving a team under its own subtree is refused."""
    _require_admin(actor, "change teams")
    team = get_team(session, actor=actor, team_id=team_id)
    changes = data.model_dump(exclude_unset=True)
    if "parent_id" in changes and changes["parent_id"] is not None:
        _check_team(session, changes["parent_id"], "parent_id")
        if changes["parent_id"] in team_subtree(session, team.id):
            raise Conflict("a team cannot be moved under itself or one of its sub-teams", field="parent_id")
    diff = apply_changes(team, changes)
    if diff:
        audit(session, actor, "update", "team", team.id, diff)
    return team


def delete_team(session: Session, *, actor: Actor, team_id: int) -> None:
    """Delete an empty team (admins)."""
    _require_admin(actor, "delete teams")
    team = get_team(session, actor=actor, team_id=team_id)
    if session.scalar(select(User.id).where(User.team_id == team_id).limit(1)) is not None:
        raise Conflict("team still has members; move them first")
    if session.scalar(select(Team.id).where(Team.parent_id == team_id).limit(1)) is not None:
        raise Conflict("team still has sub-teams; move or delete them first")
    session.delete(team)
    audit(session, actor, "delete", "team", team_id)


# --- users -------------------------------------------------------------------------------------


def list_users(
    session: Session,
    *,
    actor: Actor,
    role: str | None = None,
    team_id: int | None = None,
    is_active: bool | None = None,
    sort: str = "username",
    cursor: str | None = None,
    limit: int = 50,
) -> Page[User]:
    """Users the actor may see, filtered."""
    stmt = select(User).where(user_scope(actor))
    if role:
        stmt = stmt.where(User.role == role)
    if team_id is not None:
        stmt = stmt.where(User.team_id == team_id)
    if is_active is not None:
        stmt = stmt.where(User.is_active == is_active)
    return paginate(session, stmt, model=User, sortable=USER_SORT, sort=sort, cursor=cursor, limit=limit)


def get_user(session: Session, *, actor: Actor, user_id: int) -> User:
    """One user the actor may see."""
    return get_visible(session, User, user_id, user_scope(actor))


def create_user(session: Session, *, actor: Actor, data: schemas.UserCreate) -> User:
    """Create a user (admins)."""
    _require_admin(actor, "create users")
    _check_team(session, data.team_id)
    if session.scalar(select(User.id).where(User.username == data.username)) is not None:
        raise Conflict(f"username {data.username!r} is taken", field="username")
    fields = data.model_dump(exclude={"password"})
    fields["role"] = data.role.value
    user = User(password_hash=hash_password(data.password), **fields)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create won the race for the username
        raise Conflict(f"username {data.username!r} is taken", field="username") from exc
    audit(session, actor, "create", "user", user.id, {"username": user.username, "role": user.role})
    return user


def update_user(session: Session, *, actor: Actor, user_id: int, data: schemas.UserUpdate) -> User:
    """Change a user: admins anything; supervisors capacity, skills, hours and activity in their subtree."""
    user = get_user(session, actor=actor, user_id=user_id)
    changes = data.model_dump(exclude_unset=True)
    if not actor.is_admin:
        if not can_manage_user(actor, user.team_id):
            raise Forbidden("you may only change users of your own team subtree")
        not_allowed = sorted(set(changes) - SUPERVISOR_USER_FIELDS)
        if not_allowed:
            raise Forbidden(f"only an admin may change {', '.join(not_allowed)}")
    if "team_id" in changes:
        _check_team(session, changes["team_id"])
    if user.id == actor.id and changes.get("role") not in (None, Role.ADMIN) and actor.is_admin:
        raise Conflict("an admin cannot remove their own admin role", field="role")
    password = changes.pop("password", None)
    diff = apply_changes(user, changes)
    if password:
        user.password_hash = hash_password(password)
        diff["password"] = "<changed>"
    if diff:
        audit(session, actor, "update", "user", user.id, redact(diff, frozenset({"email"})))
    return user


def deactivate_user(session: Session, *, actor: Actor, user_id: int) -> User:
    """Deactivate a user (admins); their leads keep their owner until reassigned or recycled."""
    user = get_user(session, actor=actor, user_id=user_id)  # 404 before 403: never reveal rows
    _require_admin(actor, "deactivate users")
    if user_id == actor.id:
        raise Conflict("you cannot deactivate yourself")
    if user.is_active:
        user.is_active = False
        audit(session, actor, "deactivate", "user", user.id)
    return user


def load_user(session: Session, user_id: int) -> User:
    """A user by id regardless of scope (authentication), NotFound if missing."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user
