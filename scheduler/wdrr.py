"""Weighted deficit round robin over per-user, per-model queues, with burst credits (DESIGN section 5).

Each (user, model) pair with waiting requests is a *flow* in that model's round robin. A visit adds
`quantum × weight` to the flow's deficit; the flow's oldest request goes out once the deficit covers
its cost. Rather than walking the ring visit by visit, each flow is keyed by the visit at which its
deficit will cover its head, `(round, position)`: the smallest key among models with a free slot is
the flow the round robin serves next, found in O(log n) with one heap per model. Visits that
dispatch nothing are never simulated; their quanta are added when the flow is finally served.

Flows are per model, so a request never waits behind another model's (no head-of-line blocking) and
a user busy on one model is never starved on another. Models that share a backend compare keys on
one scale of rounds, so a shared node's slots are split by weight across all their users.

A user returning from idle may hold burst credit. While the credit covers the cost of the head of
a newly opened flow, that flow skips the round robin and its head takes the next free slot, paid
from the credit; once the credit falls short the flow joins the ring's tail like any other. No
backend grants two burst requests in a row while a round-robin request it could serve waits, so
burst traffic gets at most half of any backend's slots and never starves the ring.

A user may be capped to a number of running requests (`max_running` at submission). While a user
is at its cap its flows wait *out* of the rotation (parked: no heap entry, no quanta earned, a
positive deficit dropped as when a queue empties); the slots it cannot take go to the others. When
one of its requests ends its flows rejoin like newly active ones, so being capped banks nothing.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter, defaultdict, deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from scheduler.backends import BackendPool, BackendState, Slot
from scheduler.users import UserState

# Retry-After when nothing serves the model now: a few registry polls, or an admin's reaction.
NO_BACKEND_RETRY_AFTER_S = 30
# The OpenAI SDK ignores a longer Retry-After and falls back to its own short backoff.
MAX_RETRY_AFTER_S = 120
# How long a request is assumed to hold its slot until one for that model has finished.
ASSUMED_HOLD_S = 5.0
HOLD_EMA_ALPHA = 0.2
# What `_flows` holds for a user with no open flow, without making a dict for each look-up.
_NO_FLOWS: Mapping[str, _Flow] = MappingProxyType({})


@dataclass(frozen=True)
class SchedulerConfig:
    """The knobs operators set: gateway options `scheduler_*`, env `SCHEDULER_FAIRNESS_WINDOW`."""

    quantum: float = 1000.0  # tokens a weight-1 user earns per round-robin visit
    burst_cap: float = 4000.0  # most burst credit, in tokens per unit of weight
    fairness_window_s: float = 300.0  # usage history; idling this long fills the burst credit
    max_queue_per_user: int = 64  # waiting requests per user before QueueFull, unless `submit` says (0: none)
    max_wait_s: float = 300.0  # longest wait before `expired` hands the request back

    def __post_init__(self) -> None:
        for name, what in (
            ("quantum", "a positive number of tokens"),
            ("fairness_window_s", "a positive number of seconds"),
            ("max_wait_s", "a positive number of seconds"),
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"scheduler {name} must be {what}, got {getattr(self, name)!r}")
        if not self.burst_cap >= 0:
            raise ValueError(
                f"scheduler burst_cap must be 0 (no bursts) or more tokens, got {self.burst_cap!r}"
            )
        if not self.max_queue_per_user >= 0:
            raise ValueError(
                f"scheduler max_queue_per_user must be 0 (no bound) or more, got {self.max_queue_per_user!r}"
            )


class Grant(NamedTuple):
    """A request that may go upstream now, to `backend_id`; it holds a slot until `release`."""

    request_id: str
    backend_id: int
    model: str
    user_id: Hashable
    waited_s: float
    burst: bool  # granted on burst credit rather than by the round robin


class Rejected(Exception):
    """A request the scheduler will not queue; answer it with `Retry-After: retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(Rejected):
    """The user already has as many requests waiting as its bound allows (the gateway answers 429);
    `retry_after_s` is when one of its places is likely to free."""


class NoBackend(Rejected):
    """No healthy, enabled, undrained backend serves the model (the gateway answers 503)."""


class _FlowHeap:
    """One model's flows, smallest key first, as entries `(*key, version, flow)`.

    Re-keying a flow just pushes a fresh entry: only the one with the flow's latest version is live,
    and stale ones are skipped when they reach the top. Stale entries are also shed whenever the
    heap has doubled since it was last shed, so memory stays proportional to the flows. Shedding is
    spread over the pushes that follow, so that no one call pays for the whole heap: the entries so
    far are set aside as an older heap, still read, and each push moves a few off its end (which
    leaves it a heap), putting the live ones back and dropping the stale ones.
    """

    SHED_PER_PUSH = 4  # at 2, the pushes made while shedding would outgrow what it sheds

    def __init__(self) -> None:
        self._entries: list[tuple] = []
        self._older: list[tuple] = []  # being shed; empty when no shedding is under way
        self._size_after_shedding = 0

    def push(self, entry: tuple) -> None:
        heapq.heappush(self._entries, entry)
        if self._older:
            self._shed_some()
        elif len(self._entries) > 2 * self._size_after_shedding + 64:
            self._older, self._entries = self._entries, []

    def head(self) -> tuple | None:
        """The smallest live entry, left in place."""
        top = self._live_top(self._entries)
        if not self._older:
            return top
        older_top = self._live_top(self._older)
        if top is None or (older_top is not None and older_top < top):
            return older_top
        return top

    def pop_head(self) -> tuple:
        """Remove the entry `head()` just returned: the smaller of the two heaps' tops, both live now."""
        older, entries = self._older, self._entries
        if older and (not entries or older[0] < entries[0]):
            return heapq.heappop(older)
        return heapq.heappop(entries)

    @staticmethod
    def _live_top(heap: list[tuple]) -> tuple | None:
        while heap and heap[0][-1].version != heap[0][-2]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _shed_some(self) -> None:
        older = self._older
        for _ in range(min(self.SHED_PER_PUSH, len(older))):
            entry = older.pop()
            if entry[-1].version == entry[-2]:
                heapq.heappush(self._entries, entry)
        if not older:
            self._size_after_shedding = len(self._entries)


@dataclass(eq=False, slots=True)
class _Request:
    request_id: str
    user: UserState
    model: str
    cost: float
    submitted_at: float
    arrival: int
    waiting: bool = True
    on_burst_credit: bool = False  # set when granted


@dataclass(eq=False, slots=True)
class _Flow:
    """A user's queue for one model: first spending burst credit, then in the model's round robin."""

    user: UserState
    model: str
    deficit: float
    in_ring: bool = False
    position: int = -1  # place in the ring: a flow that joins later sorts after every earlier one
    round: int = 0  # last round whose quantum `deficit` includes
    queue: deque[_Request] = field(default_factory=deque)  # its head is always still waiting
    waiting: int = 0
    version: int = -1  # of its one live heap entry; -1 once closed
    key: tuple | None = None  # that entry's sort key, None while it has no entry


class Scheduler:
    """Decides which waiting request gets which free backend slot.

    Drive it from one thread, with a `now` that never goes backwards (`time.monotonic()`): the queue
    of waiting requests is kept in submission order, and taken as oldest first.
    """

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self._pool = BackendPool()
        self._users: dict[Hashable, UserState] = {}
        self._flows: dict[Hashable, dict[str, _Flow]] = {}  # user id -> model -> open flow
        self._waiting: dict[str, _Request] = {}  # in submission order: oldest first, as `now` only grows
        self._waiting_by_model: Counter[str] = Counter()
        # Per model, made on the first push (look up with .get): entries (round, position, version, flow)
        self._rings: defaultdict[str, _FlowHeap] = defaultdict(_FlowHeap)
        self._ring_sizes: Counter[str] = Counter()  # flows in each model's ring
        self._pointers: dict[str, tuple[int, int]] = {}  # (round, position) of the model's latest visit
        # Per model, made on the first push too: entries (head's arrival, version, flow)
        self._bursting: defaultdict[str, _FlowHeap] = defaultdict(_FlowHeap)
        self._burst_granted_last: dict[int, bool] = {}
        self._hold_ema_s: dict[str, float] = {}
        self._arrivals = itertools.count()
        self._positions = itertools.count()
        self._versions = itertools.count()

    # --- what the gateway calls ---------------------------------------------------------------

    def update_backends(self, states: Iterable[BackendState]) -> None:
        """Replace the backend table (after a registry read or a poll); granted slots stay held."""
        self._pool.replace(states)

    def reconfigure(self, config: SchedulerConfig, now: float) -> None:
        """Apply new knobs to everything queued; credit earned so far keeps the old rate."""
        for user in self._users.values():
            user.settle(now, self.config.burst_cap, self.config.fairness_window_s)
            user.burst_credit = min(user.burst_credit, config.burst_cap * user.weight)
        self.config = config
        for flows in self._flows.values():
            for flow in flows.values():
                self._schedule(flow)

    def submit(
        self,
        request_id: str,
        user_id: Hashable,
        weight: float,
        model: str,
        cost: float,
        now: float,
        max_waiting: int | None = None,
        max_running: int = 0,
    ) -> None:
        """Queue a request whose expected size is `cost` tokens; `dispatch` decides when it goes.

        `max_waiting` bounds the user's waiting requests (None: the config's `max_queue_per_user`;
        0: no bound); `max_running` caps the user's running ones (0: no cap). Like the weight, the
        latest submission's values apply to all the user's requests.

        Raises NoBackend or QueueFull (both `Rejected`, with a Retry-After estimate) when it
        cannot be queued.
        """
        if request_id in self._waiting or self._pool.holds(request_id):
            raise ValueError(f"request {request_id!r} is already queued or running")
        if not weight > 0:
            raise ValueError(f"user {user_id!r}: weight must be positive, got {weight!r}")
        if not cost > 0:
            raise ValueError(
                f"request {request_id!r}: cost must be a positive number of tokens, got {cost!r}"
            )
        if not self._pool.serves(model):
            retry_after_s = self.retry_after_s(model)
            raise NoBackend(
                f"no healthy backend serves {model!r} now; retry after {retry_after_s} s", retry_after_s
            )
        user = self._user(user_id, weight, now)
        if max_running < 0:
            raise ValueError(f"user {user_id!r}: max_running must be 0 (no cap) or more, got {max_running!r}")
        if max_running != user.max_running:
            self._set_cap(user, max_running)
        bound = self.config.max_queue_per_user if max_waiting is None else max_waiting
        if bound and user.waiting >= bound:
            retry_after_s = self._place_frees_in(user, model)
            raise QueueFull(
                f"too many requests waiting: {user.waiting} already wait for a slot (limit {bound}); "
                f"retry after {retry_after_s} s, when one of them has likely started",
                retry_after_s,
            )
        user.settle(now, self.config.burst_cap, self.config.fairness_window_s)
        user.idle_since = None
        request = _Request(request_id, user, model, float(cost), now, next(self._arrivals))
        self._waiting[request_id] = request
        self._waiting_by_model[model] += 1
        user.waiting += 1
        self._enqueue(request)

    def dispatch(self, now: float) -> list[Grant]:
        """Fill every free slot that has a waiting request for a model it serves.

        Call after every submit, release, cancel, expiry and backend update.
        """
        grants = []
        while (choice := self._next_grant()) is not None:
            request, backend_id = choice
            grants.append(self._grant(request, backend_id, now))
        return grants

    def release(self, request_id: str, actual_tokens: int | None, now: float) -> bool:
        """Free a granted request's slot, charging `actual_tokens - cost` to its user.

        Returns False, changing nothing, for a request that holds no slot (already released).
        `actual_tokens` None keeps the estimate (usage unknown).
        """
        slot = self._pool.release(request_id)
        if slot is None:
            return False
        user = self._users[slot.user_id]
        was_capped = user.capped
        user.in_flight -= 1
        if was_capped and not user.capped:
            self._unpark(user)
        if actual_tokens is not None:
            self._correct(user, slot.model, slot.cost - actual_tokens, now)
        served = slot.cost if actual_tokens is None else actual_tokens
        user.record_usage(now, served, self.config.fairness_window_s)
        held_s = now - slot.granted_at
        previous = self._hold_ema_s.get(slot.model)
        self._hold_ema_s[slot.model] = (
            held_s if previous is None else previous + HOLD_EMA_ALPHA * (held_s - previous)
        )
        self._note_if_idle(user, now)
        return True

    def transfer(self, request_id: str, exclude: frozenset[int], now: float) -> Grant | None:
        """Move a granted request to the best other backend with a free slot (its own failed before
        answering), skipping the queue it already waited in. None when no other backend has a free
        slot now: the request keeps the slot it holds, to try again after the next release.
        """
        slot = self._pool.slot_of(request_id)
        if slot is None:
            return None
        backend_id = self._pool.best_backend(slot.model, exclude | {slot.backend_id})
        if backend_id is None:
            return None
        return self.move(request_id, backend_id, now)

    def move(self, request_id: str, backend_id: int, now: float) -> Grant | None:
        """Move a granted request's slot to `backend_id`, which something else found free (the cluster's
        shared slot table); None if the request holds no slot or the backend is unknown here."""
        slot = self._pool.slot_of(request_id)
        if slot is None or not self._pool.knows(backend_id):
            return None
        self._pool.release(request_id)
        self._pool.acquire(slot._replace(backend_id=backend_id))
        return Grant(request_id, backend_id, slot.model, slot.user_id, now - slot.granted_at, False)

    def grant_chosen(self, request_id: str, backend_id: int, now: float) -> Grant | None:
        """Grant a waiting request the slot that a decision outside this scheduler gave it: the cluster's
        shared queue, which orders the requests of every gateway and keeps the ledger they are charged
        to. The request leaves its queue as if served, its flow's deficit untouched. None if it is not
        waiting here or the backend is unknown here."""
        request = self._waiting.get(request_id)
        if request is None or not self._pool.knows(backend_id):
            return None
        self._withdraw(request, now)
        user = request.user
        user.in_flight += 1
        user.idle_since = None
        self._pool.acquire(Slot(request_id, backend_id, user.user_id, request.model, request.cost, now))
        if user.capped:
            self._park_all(user)
        return Grant(request_id, backend_id, request.model, user.user_id, now - request.submitted_at, False)

    def holds(self, request_id: str) -> bool:
        """Whether the request holds a slot (granted and not yet released)."""
        return self._pool.holds(request_id)

    def slot_of(self, request_id: str) -> Slot | None:
        return self._pool.slot_of(request_id)

    def slots(self) -> list[Slot]:
        """The granted requests and where they run."""
        return list(self._pool.slots())

    def cancel(self, request_id: str, now: float) -> bool:
        """Take a waiting request out of line (its client left); False if it is not waiting."""
        request = self._waiting.get(request_id)
        if request is None:
            return False
        self._withdraw(request, now)
        return True

    def expired(self, now: float) -> list[str]:
        """Withdraw and return the requests that have waited longer than `max_wait_s`, oldest first."""
        cutoff = now - self.config.max_wait_s
        gone = []
        for request in self._waiting.values():  # oldest first
            if request.submitted_at >= cutoff:
                break
            gone.append(request)
        for request in gone:  # once the loop is over: withdrawing changes `_waiting`
            self._withdraw(request, now)
        return [request.request_id for request in gone]

    def _place_frees_in(self, user: UserState, model: str) -> int:
        """Seconds until the user's oldest waiting request is likely to start, freeing a place in its
        queue: a slot's hold time over the slots its weight (and cap) gives it among the active users."""
        slots = self._pool.capacity(model)
        if not slots:
            return NO_BACKEND_RETRY_AFTER_S
        active_weight = sum(u.weight for u in self._users.values() if u.waiting or u.in_flight)
        user_slots = slots * user.weight / max(active_weight, user.weight)
        if user.max_running:
            user_slots = min(user_slots, user.max_running)
        estimate = self._hold_ema_s.get(model, ASSUMED_HOLD_S) / user_slots
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(estimate - 1e-9)))

    def retry_after_s(self, model: str) -> int:
        """Seconds until the model's current backlog has been dispatched, for a Retry-After."""
        slots = self._pool.capacity(model)
        if not slots:
            return NO_BACKEND_RETRY_AFTER_S
        hold_s = self._hold_ema_s.get(model, ASSUMED_HOLD_S)
        estimate = hold_s * self._waiting_by_model[model] / slots
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(estimate)))

    def snapshot(self, now: float) -> dict:
        """Plain data for dashboards and the queue table: queues, users' standing, backends' slots."""
        queues: dict[tuple[Hashable, str], dict] = {}

        def queue_row(user_id: Hashable, model: str) -> dict:
            key = (user_id, model)
            if key not in queues:
                queues[key] = {
                    "user_id": user_id,
                    "model": model,
                    "waiting": 0,
                    "in_flight": 0,
                    "deficit": 0.0,
                    "oldest_wait_s": None,
                }
            return queues[key]

        for request in self._waiting.values():
            row = queue_row(request.user.user_id, request.model)
            row["waiting"] += 1
            row["oldest_wait_s"] = max(row["oldest_wait_s"] or 0.0, now - request.submitted_at)
        for slot in self._pool.slots():
            queue_row(slot.user_id, slot.model)["in_flight"] += 1
        for user_id, flows in self._flows.items():
            for model, flow in flows.items():
                queue_row(user_id, model)["deficit"] = flow.deficit

        users = []
        active_weight = sum(u.weight for u in self._users.values() if u.waiting or u.in_flight)
        for user in self._users.values():
            user.forget_usage_before(now - self.config.fairness_window_s)
            credit, debt = user.earned_since_idle(now, self.config.burst_cap, self.config.fairness_window_s)
            if (
                user.waiting
                or user.in_flight
                or user.served
                or debt
                or credit < self.config.burst_cap * user.weight
            ):
                users.append(
                    {
                        "user_id": user.user_id,
                        "weight": user.weight,
                        "burst_credit": credit,
                        "debt": debt,
                        "served_tokens": user.served_total,
                        "running": user.in_flight,
                        "waiting": user.waiting,
                        "cap": user.max_running or None,
                        "entitled_share": user.weight / active_weight
                        if active_weight and (user.waiting or user.in_flight)
                        else 0.0,
                    }
                )
        served_total = sum(row["served_tokens"] for row in users)
        for row in users:
            row["share"] = row["served_tokens"] / served_total if served_total else 0.0
        return {
            "waiting": len(self._waiting),
            "in_flight": sum(row["in_flight"] for row in queues.values()),
            "queues": list(queues.values()),
            "users": users,
            "backends": self._pool.snapshot(),
        }

    # --- users and flows ------------------------------------------------------------------------

    def _user(self, user_id: Hashable, weight: float, now: float) -> UserState:
        user = self._users.get(user_id)
        if user is None:  # never seen: as if idle for ever
            user = UserState(user_id, weight, burst_credit=self.config.burst_cap * weight, idle_since=now)
            self._users[user_id] = user
        elif user.weight != weight:  # an admin changed the role or override
            user.settle(now, self.config.burst_cap, self.config.fairness_window_s)
            user.weight = weight
            for flow in self._flows.get(user_id, _NO_FLOWS).values():
                self._schedule(flow)
        return user

    def _set_cap(self, user: UserState, max_running: int) -> None:
        was_capped = user.capped
        user.max_running = max_running
        if was_capped and not user.capped:
            self._unpark(user)
        elif user.capped and not was_capped:
            self._park_all(user)

    def _park_all(self, user: UserState) -> None:
        for flow in self._flows.get(user.user_id, _NO_FLOWS).values():
            self._park(flow)

    @staticmethod
    def _park(flow: _Flow) -> None:
        """A capped user's flow keeps its place in the ring but loses its heap entry: it is not served."""
        flow.key, flow.version = None, -2  # no live entry has this version

    def _unpark(self, user: UserState) -> None:
        """The user may run one more: its waiting flows are keyed again. One in the ring resumes at its
        next visit after the ring's pointer, with the deficit it had: the visits that went by while it
        was capped earned it nothing, so it has no run of banked turns to take."""
        for flow in self._flows.get(user.user_id, _NO_FLOWS).values():
            if flow.key is not None or not flow.waiting:
                continue
            if flow.in_ring:
                pointer_round, pointer_position = self._pointers[flow.model]
                next_visit = pointer_round + (flow.position <= pointer_position)
                flow.round = max(flow.round, next_visit - 1)
            self._schedule(flow)

    def _note_if_idle(self, user: UserState, now: float) -> None:
        if not user.waiting and not user.in_flight and user.idle_since is None:
            user.idle_since = now

    def _enqueue(self, request: _Request) -> None:
        user = request.user
        flows = self._flows.get(user.user_id)
        if flows is None:
            flows = self._flows[user.user_id] = {}
        flow = flows.get(request.model)
        if flow is None:
            flow = flows[request.model] = _Flow(user, request.model, deficit=-user.debt)
            user.debt = 0.0
        flow.queue.append(request)
        flow.waiting += 1
        if flow.waiting == 1:
            self._schedule(flow)

    def _join_ring(self, flow: _Flow) -> None:
        """A newly active flow takes its first turn at the end of the current round, after every
        flow still due one in it. One whose user already had a turn in this round (its queue
        emptied and refilled) waits for the next round: leaving and coming back earns no extra turn.
        """
        current = self._current_round(flow.model)
        had_turn = flow.user.last_turns.get(flow.model, current - 1) >= current
        flow.round = current if had_turn else current - 1
        flow.position = next(self._positions)
        flow.in_ring = True
        self._ring_sizes[flow.model] += 1

    def _current_round(self, model: str) -> int:
        """The model's round in progress. A model whose ring is empty starts level with the
        furthest-behind model it shares a backend with, so an idle spell banks no advantage."""
        if self._ring_sizes[model]:
            return self._pointers[model][0]
        rivals = [
            self._pointers[other][0] for other in self._pool.neighbours(model) if self._ring_sizes[other]
        ]
        round_ = min(rivals) if rivals else self._pointers.get(model, (0, -1))[0]
        self._pointers[model] = (round_, -1)
        return round_

    def _schedule(self, flow: _Flow) -> None:
        """(Re)key the flow: by its head's arrival while burst credit pays for the head, otherwise
        at the ring visit where its deficit first covers the head's cost; parked while its user is capped."""
        if flow.user.capped:
            self._park(flow)
            return
        if not flow.in_ring and flow.user.burst_credit >= flow.queue[0].cost:
            key, heaps = (flow.queue[0].arrival,), self._bursting
        else:
            if not flow.in_ring:
                self._join_ring(flow)
            shortfall = flow.queue[0].cost - flow.deficit
            visits = 0 if shortfall <= 0 else math.ceil(shortfall / (self.config.quantum * flow.user.weight))
            key, heaps = (flow.round + visits, flow.position), self._rings
        if key == flow.key:  # its entry is still right
            return
        flow.key, flow.version = key, next(self._versions)
        heaps[flow.model].push((*key, flow.version, flow))

    def _close(self, flow: _Flow) -> None:
        """The flow has nothing waiting: it leaves the ring and, as in DRR, loses a positive deficit.

        A negative one (cost corrections) follows the user as debt, less the quanta of visits the
        ring made while the flow was waiting.
        """
        if flow.in_ring:
            self._ring_sizes[flow.model] -= 1
            if flow.deficit < 0:
                pointer_round, pointer_position = self._pointers[flow.model]
                passed = pointer_round - flow.round - (flow.position > pointer_position)
                flow.deficit += max(0, passed) * self.config.quantum * flow.user.weight
        if flow.deficit < 0:
            flow.user.debt -= flow.deficit
        flow.version, flow.key = -1, None
        flows = self._flows[flow.user.user_id]
        del flows[flow.model]
        if not flows:
            del self._flows[flow.user.user_id]

    @staticmethod
    def _drop_departed_heads(flow: _Flow) -> None:
        while flow.queue and not flow.queue[0].waiting:
            flow.queue.popleft()

    def _correct(self, user: UserState, model: str, overcharge: float, now: float) -> None:
        """Settle the difference between a request's estimated cost and its real usage."""
        flow = self._flows.get(user.user_id, _NO_FLOWS).get(model)
        if flow is not None:
            flow.deficit += overcharge
            if flow.in_ring:  # a bursting flow is keyed by its head's arrival, whatever its deficit
                self._schedule(flow)
            return
        user.settle(now, self.config.burst_cap, self.config.fairness_window_s)
        if overcharge >= 0:
            user.refund(overcharge)
        else:
            user.charge(-overcharge)
            self._reconsider_bursts(user)

    def _reconsider_bursts(self, user: UserState) -> None:
        """Burst credit shrank: re-key the user's bursting flows whose entry no longer holds, that is
        those whose head it no longer covers, and the one whose head was just served (it has none)."""
        for flow in self._flows.get(user.user_id, _NO_FLOWS).values():
            if not flow.in_ring and (flow.key is None or user.burst_credit < flow.queue[0].cost):
                self._schedule(flow)

    def _withdraw(self, request: _Request, now: float) -> None:
        del self._waiting[request.request_id]
        request.waiting = False
        self._waiting_by_model[request.model] -= 1
        user = request.user
        user.waiting -= 1
        flow = self._flows[user.user_id][request.model]
        flow.waiting -= 1
        if not flow.waiting:
            self._close(flow)
        elif flow.queue[0] is request:
            self._drop_departed_heads(flow)
            self._schedule(flow)
        self._note_if_idle(user, now)

    # --- choosing ---------------------------------------------------------------------------------

    @staticmethod
    def _smallest_head(heaps: dict[str, _FlowHeap], models: Iterable[str]) -> tuple | None:
        """The smallest live entry over the heaps of `models` (a few models: O(models × log n))."""
        best = None
        for model in models:
            heap = heaps.get(model)
            entry = heap.head() if heap is not None else None
            if entry is not None and (best is None or entry < best):
                best = entry
        return best

    def _next_grant(self) -> tuple[_Request, int] | None:
        free_models = self._pool.free_models()
        if not free_models:  # how every dispatch ends on a busy cluster
            return None
        burst = self._smallest_head(self._bursting, free_models)
        if burst is not None:
            backend_id = self._pool.best_backend(burst[-1].model)
            if self._burst_granted_last.get(backend_id):
                rival = self._smallest_head(self._rings, self._pool.models_of(backend_id))
                if rival is not None:
                    return self._take_turn(rival), backend_id
            return self._spend_burst(burst), backend_id
        entry = self._smallest_head(self._rings, free_models)
        if entry is None:
            return None
        return self._take_turn(entry), self._pool.best_backend(entry[-1].model)

    def _take_turn(self, entry: tuple[int, int, int, _Flow]) -> _Request:
        """Serve the flow at its keyed visit, adding the quanta of the visits skipped on the way."""
        round_, position, _, flow = entry
        self._rings[flow.model].pop_head()  # `entry` is that ring's head
        flow.key = None
        flow.deficit += (round_ - flow.round) * self.config.quantum * flow.user.weight
        flow.round = round_
        self._pointers[flow.model] = max(self._pointers[flow.model], (round_, position))
        flow.user.last_turns[flow.model] = round_
        request = flow.queue.popleft()
        flow.deficit -= request.cost
        flow.waiting -= 1
        self._drop_departed_heads(flow)
        if flow.waiting:
            self._schedule(flow)
        else:
            self._close(flow)
        return request

    def _spend_burst(self, entry: tuple[int, int, _Flow]) -> _Request:
        """Serve the flow's head out of turn, paid from its user's burst credit."""
        flow = entry[2]
        self._bursting[flow.model].pop_head()  # `entry` is that heap's head
        flow.key = None
        request = flow.queue.popleft()
        request.on_burst_credit = True
        flow.user.burst_credit -= request.cost
        flow.waiting -= 1
        self._drop_departed_heads(flow)
        if not flow.waiting:
            self._close(flow)
        self._reconsider_bursts(flow.user)  # this flow's next head and the user's other bursting flows
        return request

    def _grant(self, request: _Request, backend_id: int, now: float) -> Grant:
        del self._waiting[request.request_id]
        request.waiting = False
        self._waiting_by_model[request.model] -= 1
        user = request.user
        user.waiting -= 1
        user.in_flight += 1
        self._pool.acquire(
            Slot(request.request_id, backend_id, user.user_id, request.model, request.cost, now)
        )
        self._burst_granted_last[backend_id] = request.on_burst_credit
        if user.capped:
            self._park_all(user)
        return Grant(
            request.request_id,
            backend_id,
            request.model,
            user.user_id,
            now - request.submitted_at,
            request.on_burst_credit,
        )
