"""Token quotas in the store: a user's row for a period, made by whoever needs it first, and quota requests.

Nothing here imports Flask: the default budget is passed in. `store.models.get_or_create_quota` is the one helper
the gateway shares (it reserves against the same rows the admin app shows and tops up).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import peewee

from admin_app.admin_actions import record_action
from admin_app.api_values import iso_utc
from scheduler.quota import Ledger, budget_for, period_of
from store.db import database
from store.models import Quota, QuotaRequest, User, get_or_create_quota, latest_committed, utcnow

QUOTA_REQUEST_STATUSES = ("pending", "approved", "denied")
MAX_PENDING_REQUESTS = 5
AMOUNT_LIMIT = 10**12
REASON_MAX_LENGTH = 2000
NOTE_MAX_LENGTH = 2000


class QuotaConflict(RuntimeError):
    """The request cannot be made in the current state (answered 409)."""


def base_budget(user: User, default_budget: int) -> int:
    """The user's monthly budget before any approved top-up: role × default, or the override."""
    return budget_for(user.role, user.token_budget_override, default_budget)


def quota_of(user: User, period: str, default_budget: int) -> Quota:
    """`user`'s quota row for `period`, made with the user's budget if it is the first need of one."""
    return get_or_create_quota(user.id, period, base_budget(user, default_budget))


@dataclass(frozen=True)
class QuotaStanding:
    """Where a user stands in a period; `from_row` is False while no quota row exists yet."""

    user: User
    period: str
    budget: int
    used: int
    reserved: int
    from_row: bool

    @property
    def remaining(self) -> int:
        return Ledger(self.budget, self.used, self.reserved).remaining

    def as_json(self) -> dict:
        return {
            "user_id": self.user.id,
            "user": self.user.username,
            "role": self.user.role,
            "active": self.user.active,
            "period": self.period,
            "budget": self.budget,
            "used": self.used,
            "reserved": self.reserved,
            "remaining": self.remaining,
            "source": "quota" if self.from_row else "default",
        }


def standing_of(user: User, period: str, default_budget: int) -> QuotaStanding:
    """Read-only: a period nobody has used yet shows the budget it would start with, creating no row."""
    row = Quota.get_or_none((Quota.user == user.id) & (Quota.period == period))
    return _standing(user, period, default_budget, row)


def standings(period: str, default_budget: int) -> list[QuotaStanding]:
    """Every user's standing in `period`, by username: two queries whatever the number of users."""
    rows = {row.user_id: row for row in Quota.select().where(Quota.period == period)}
    return [
        _standing(user, period, default_budget, rows.get(user.id))
        for user in User.select().order_by(User.username)
    ]


def _standing(user: User, period: str, default_budget: int, row: Quota | None) -> QuotaStanding:
    if row is None:
        return QuotaStanding(user, period, base_budget(user, default_budget), 0, 0, False)
    return QuotaStanding(user, period, row.budget, row.used, row.reserved, True)


def shift_current_budget(user: User, delta: int, now: dt.datetime | None = None) -> tuple[int, int] | None:
    """Move the budget of `user`'s current-period row by `delta` (never below 0), keeping approved
    top-ups: what a change of role or budget override does to a month already under way.
    Returns (before, after), or None when the period has no row yet (it will start at the new budget)."""
    where = (Quota.user == user.id) & (Quota.period == period_of(now or utcnow()))
    row = latest_committed(Quota.select().where(where)).first()
    if row is None or delta == 0:
        return None
    after = max(0, row.budget + delta)
    Quota.update(budget=after).where(Quota.id == row.id).execute()
    return row.budget, after


def quota_requests_query() -> peewee.Select:
    """Quota requests with their requester and decider joined, newest first."""
    decider = User.alias("decider")
    return (
        QuotaRequest.select(QuotaRequest, User, decider)
        .join(User, on=(QuotaRequest.user == User.id))
        .switch(QuotaRequest)
        .join(decider, peewee.JOIN.LEFT_OUTER, on=(QuotaRequest.decided_by == decider.id), attr="decider")
        .order_by(QuotaRequest.created_at.desc(), QuotaRequest.id.desc())
    )


def _decider_name(row: QuotaRequest) -> str | None:
    decider = getattr(row, "decider", None)  # joined by quota_requests_query
    if decider is None and row.decided_by_id is not None:
        decider = User.get_or_none(User.id == row.decided_by_id)
    return decider.username if decider is not None and decider.id is not None else None


def quota_request_json(row: QuotaRequest) -> dict:
    return {
        "id": row.id,
        "user_id": row.user_id,
        "user": row.user.username,
        "amount": row.amount,
        "reason": row.reason,
        "status": row.status,
        "created_at": iso_utc(row.created_at),
        "decided_by": _decider_name(row),
        "decided_at": iso_utc(row.decided_at),
        "decision_note": row.decision_note,
    }


def quota_request_by_id(request_id: int) -> QuotaRequest | None:
    return quota_requests_query().where(QuotaRequest.id == request_id).first()


def request_more_quota(user: User, amount: int, reason: str) -> QuotaRequest:
    """A user asks for `amount` more tokens this period; admins approve or deny it."""
    pending = QuotaRequest.select().where((QuotaRequest.user == user.id) & (QuotaRequest.status == "pending"))
    if pending.count() >= MAX_PENDING_REQUESTS:
        raise QuotaConflict(
            f"you already have {MAX_PENDING_REQUESTS} pending quota requests; "
            "wait for an admin to decide them before asking again"
        )
    with database.atomic():
        row = QuotaRequest.create(user=user.id, amount=amount, reason=reason)
        record_action(
            user,
            "quota_request.create",
            f"quota_request:{row.id}",
            after={"amount": amount, "reason": reason},
        )
    return quota_request_by_id(row.id)


def decide_quota_request(
    row: QuotaRequest, approve: bool, actor: User, note: str, default_budget: int, amount: int | None = None
) -> QuotaRequest:
    """Approve (adding `amount` to the requester's current-period budget) or deny, exactly once:
    the pending → decided update is conditional, so a second decision, even a concurrent one,
    changes nothing and raises QuotaConflict. An approval may grant another `amount` than asked."""
    now = utcnow()
    status = "approved" if approve else "denied"
    before = quota_request_json(row)
    granted = amount if approve and amount is not None else row.amount
    with database.atomic():
        decided = (
            QuotaRequest.update(status=status, decided_by=actor.id, decided_at=now, decision_note=note,
                                amount=granted)
            .where((QuotaRequest.id == row.id) & (QuotaRequest.status == "pending"))
            .execute()
        )
        if not decided:
            current = quota_request_by_id(row.id)
            raise QuotaConflict(
                f"quota request {row.id} was already {current.status}"
                + (f" by {_decider_name(current)}" if _decider_name(current) else "")
                + (f" at {iso_utc(current.decided_at)}" if current.decided_at else "")
            )
        after = quota_request_json(quota_request_by_id(row.id))
        if approve:
            quota = quota_of(row.user, period_of(now), default_budget)
            Quota.update(budget=Quota.budget + granted).where(Quota.id == quota.id).execute()
            budget_after = Quota.get_by_id(quota.id).budget
            before["quota"] = {"period": quota.period, "budget": budget_after - granted}
            after["quota"] = {"period": quota.period, "budget": budget_after}
        record_action(
            actor,
            f"quota_request.{'approve' if approve else 'deny'}",
            f"quota_request:{row.id}",
            before,
            after,
        )
    return quota_request_by_id(row.id)
