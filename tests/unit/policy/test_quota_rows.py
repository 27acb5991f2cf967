"""The gateway's side of the quota rows, on SQLite and MariaDB: created once per user and period, usage added."""

from __future__ import annotations

import threading

from addons import writer as writer_module
from addons.policy import add_used, budgets_of, load_quota, set_reserved
from addons.writer import Write, decode_write, encode_write, perform, perform_all
from store.models import Quota, User

PERIOD = "2025-06"


def make_user(role: str = "staff", **overrides) -> User:
    return User.create(username=f"{role}-{User.select().count()}", role=role, **overrides)


def test_the_first_request_of_a_period_creates_the_row_with_the_roles_budget(migrated_db):
    staff, student = make_user("staff"), make_user("student", token_budget_override=42)
    assert load_quota(staff.id, "staff", None, PERIOD, 1000) == (2000, 0)  # staff: twice the default
    assert load_quota(student.id, "student", 42, PERIOD, 1000) == (42, 0)
    assert Quota.select().count() == 2


def test_an_existing_row_wins_over_the_formula(migrated_db):
    user = make_user()
    Quota.create(user=user, period=PERIOD, budget=5000, used=123)
    assert load_quota(user.id, "staff", None, PERIOD, 1000) == (5000, 123)


def test_concurrent_first_requests_make_one_row(migrated_db):
    user = make_user()
    results, barrier = [], threading.Barrier(8)

    def first_request():
        barrier.wait()
        results.append(load_quota(user.id, "staff", None, PERIOD, 1000))
        migrated_db.close()

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(2000, 0)] * 8
    assert Quota.select().where(Quota.user == user.id).count() == 1


def test_usage_adds_up_and_the_reserved_snapshot_replaces(migrated_db):
    user, other = make_user(), make_user()
    for who in (user, other):
        load_quota(who.id, "staff", None, PERIOD, 1000)
    for tokens in (10, 20, 30):
        perform(decode_write(encode_write(add_used(user.id, PERIOD, tokens))))  # as replayed from the spill
    perform(set_reserved(user.id, PERIOD, 77))
    perform(set_reserved(user.id, PERIOD, 5))
    row = Quota.get((Quota.user == user.id) & (Quota.period == PERIOD))
    assert (row.used, row.reserved) == (60, 5)
    assert Quota.get(Quota.user == other.id).used == 0


def test_a_batch_adds_each_users_usage_between_the_audits_it_alternates_with(migrated_db, monkeypatch):
    """The writer's batch after an outage: a request's audit and its usage in turns. The usage of each user
    and period is added in one update, the audits in one call, and a write of another kind between them
    still comes in its place."""
    user, other = make_user(), make_user()
    for who in (user, other):
        load_quota(who.id, "staff", None, PERIOD, 1000)
    audited: list[list[int]] = []
    monkeypatch.setitem(writer_module.WRITES_TOGETHER, "audit", lambda batch: audited.append([d["n"] for d in batch]))
    monkeypatch.setitem(writer_module.WRITES, "marker", lambda data: audited.append(
        ["used so far", Quota.get(Quota.user == user.id).used]))
    batch = [Write("audit", {"n": 1}), add_used(user.id, PERIOD, 10), Write("audit", {"n": 2}),
             add_used(other.id, PERIOD, 5), add_used(user.id, PERIOD, 20), Write("marker", {}),
             Write("audit", {"n": 3}), add_used(user.id, PERIOD, 30)]
    perform_all(batch)
    assert audited == [[1, 2], ["used so far", 30], [3]]
    assert [Quota.get(Quota.user == who.id).used for who in (user, other)] == [60, 5]


def test_budgets_are_read_for_many_users_at_once(migrated_db):
    users = [make_user() for _ in range(3)]
    for user in users:
        load_quota(user.id, "staff", None, PERIOD, 1000)
    Quota.update(budget=Quota.budget + 500).where(Quota.user == users[1].id).execute()
    assert budgets_of(PERIOD, [u.id for u in users] + [999]) == {users[0].id: 2000, users[1].id: 2500,
                                                                 users[2].id: 2000}
