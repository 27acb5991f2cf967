"""Random interleavings of everything the gateway may do; the slot table and queues stay consistent."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scheduler import BackendState, Rejected, Scheduler, SchedulerConfig

MODELS = ("llama3.2", "qwen2.5", "mistral")
USERS = {"faculty": 3.0, "staff": 2.0, "student": 1.0, "admin": 10.0}
CAPS = {"faculty": 0, "staff": 2, "student": 1, "admin": 0}  # running requests at once (0: no cap)

backend_states = st.builds(
    BackendState,
    backend_id=st.integers(1, 4),
    models=st.frozensets(st.sampled_from(MODELS), min_size=1),
    max_concurrent=st.integers(0, 3),
    healthy=st.booleans(),
    enabled=st.booleans(),
    draining=st.booleans(),
    waiting=st.integers(0, 3),
    latency_ema_ms=st.none() | st.floats(1.0, 1000.0),
)


class SchedulerModel(RuleBasedStateMachine):
    """Keeps its own account of what should be waiting and running, and checks every grant."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduler = Scheduler(
            SchedulerConfig(
                quantum=500, burst_cap=1500, fairness_window_s=60, max_queue_per_user=5, max_wait_s=50
            )
        )
        self.backends = {1: BackendState(1, frozenset(MODELS), max_concurrent=2)}
        self.scheduler.update_backends(self.backends.values())
        self.now = 0.0
        self.ids = 0
        self.waiting: dict[str, tuple[str, str]] = {}  # request id -> (user, model)
        self.submitted_order: list[str] = []
        self.running: dict[str, int] = {}  # request id -> backend id
        self.ever_granted: set[str] = set()
        self.withdrawn: set[str] = set()
        self.owners: dict[str, str] = {}  # request id -> user

    def dispatch(self) -> None:
        for grant in self.scheduler.dispatch(self.now):
            state = self.backends.get(grant.backend_id)
            assert grant.request_id in self.waiting, "granted something not waiting"
            assert grant.request_id not in self.ever_granted, "granted twice"
            user, model = self.waiting.pop(grant.request_id)
            assert (grant.user_id, grant.model) == (user, model)
            assert state is not None and model in state.models
            assert state.healthy and state.enabled and not state.draining
            assert self.in_flight(grant.backend_id) < state.max_concurrent
            assert not CAPS[user] or self.running_of(user) < CAPS[user], "a user ran more than its cap"
            earlier_still_waiting = [
                rid
                for rid, queue in self.waiting.items()
                if queue == (user, model) and int(rid[1:]) < int(grant.request_id[1:])
            ]
            assert not earlier_still_waiting, "a user's requests for one model went out of order"
            self.running[grant.request_id] = grant.backend_id
            self.ever_granted.add(grant.request_id)
        self.check_work_conservation()

    def running_of(self, user: str) -> int:
        return sum(1 for rid in self.running if self.owners[rid] == user)

    def in_flight(self, backend_id: int) -> int:
        return sum(1 for held in self.running.values() if held == backend_id)

    def check_work_conservation(self) -> None:
        for state in self.backends.values():
            if (
                state.healthy
                and state.enabled
                and not state.draining
                and self.in_flight(state.backend_id) < state.max_concurrent
            ):
                stuck = [
                    rid
                    for rid, (user, model) in self.waiting.items()
                    if model in state.models and not (CAPS[user] and self.running_of(user) >= CAPS[user])
                ]
                assert not stuck, f"backend {state.backend_id} has a free slot while {stuck} wait"

    @rule(user=st.sampled_from(sorted(USERS)), model=st.sampled_from(MODELS), cost=st.integers(1, 3000))
    def submit(self, user, model, cost):
        self.ids += 1
        request_id = f"r{self.ids}"
        try:
            self.scheduler.submit(request_id, user, USERS[user], model, cost, self.now, max_running=CAPS[user])
        except Rejected:
            return
        self.waiting[request_id] = (user, model)
        self.owners[request_id] = user
        self.submitted_order.append(request_id)
        self.dispatch()

    @precondition(lambda self: self.running)
    @rule(data=st.data(), actual=st.none() | st.integers(0, 5000))
    def release(self, data, actual):
        request_id = data.draw(st.sampled_from(sorted(self.running)))
        assert self.scheduler.release(request_id, actual, self.now)
        del self.running[request_id]
        self.dispatch()

    @precondition(lambda self: self.ever_granted)
    @rule(data=st.data())
    def release_again(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.ever_granted)))
        if request_id not in self.running:
            assert not self.scheduler.release(request_id, 10, self.now)

    @precondition(lambda self: self.submitted_order)
    @rule(data=st.data())
    def cancel(self, data):
        request_id = data.draw(st.sampled_from(self.submitted_order))
        assert self.scheduler.cancel(request_id, self.now) == (request_id in self.waiting)
        if self.waiting.pop(request_id, None) is not None:
            self.withdrawn.add(request_id)
        self.dispatch()

    @rule(seconds=st.floats(0.0, 30.0))
    def time_passes(self, seconds):
        self.now += seconds
        for request_id in self.scheduler.expired(self.now):
            assert request_id in self.waiting
            del self.waiting[request_id]
            self.withdrawn.add(request_id)
        self.dispatch()

    @rule(states=st.lists(backend_states, max_size=4, unique_by=lambda state: state.backend_id))
    def backends_change(self, states):
        self.backends = {state.backend_id: state for state in states}
        self.scheduler.update_backends(states)
        self.dispatch()

    @invariant()
    def snapshot_agrees(self):
        snapshot = self.scheduler.snapshot(self.now)
        assert snapshot["waiting"] == len(self.waiting)
        assert snapshot["in_flight"] == len(self.running)
        for row in snapshot["backends"]:
            assert 0 <= row["in_flight"] == self.in_flight(row["backend_id"])
        assert all(0 <= row["waiting"] <= 5 for row in snapshot["queues"])
        assert all(row["burst_credit"] >= 0 for row in snapshot["users"])

    @invariant()
    def withdrawn_requests_never_run(self):
        assert not (self.withdrawn & self.ever_granted)


TestSchedulerModel = SchedulerModel.TestCase
TestSchedulerModel.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)
