"""Fair-share scheduler core: which waiting request gets which backend slot, and when.

Pure and synchronous: no I/O, no clock (every call takes `now`, seconds on any monotonic scale),
stdlib only, so the gateway's `Gate` addon drives it from its event loop and tests drive it in
virtual time. One `Scheduler` per gateway process:

    scheduler = Scheduler(SchedulerConfig(quantum=1000, burst_cap=4000, fairness_window_s=300,
                                          max_queue_per_user=64, max_wait_s=300))
    scheduler.update_backends([BackendState(backend_id=1, models=frozenset({"llama3.2"}),
                                            max_concurrent=4, resident=frozenset({"llama3.2"}))])
    cost = expected_cost(canonical.estimated_prompt_tokens, canonical.max_tokens)
    scheduler.submit("req-1", user_id=7, weight=3.0, model="llama3.2", cost=cost, now=now,
                     max_waiting=256, max_running=4)   # the user's bounds (0: none; None: the config's)
        # raises QueueFull (answer 429) or NoBackend (answer 503); both carry .retry_after_s
    for grant in scheduler.dispatch(now):       # -> [Grant(request_id, backend_id, model, user_id,
        wake(grant)                             #           waited_s, burst)]
    scheduler.release("req-1", actual_tokens=1200, now=later)   # exactly once per grant; False if repeated
    scheduler.cancel("req-2", now)              # client left while queued; False if not waiting
    for request_id in scheduler.expired(now):   # waited over max_wait_s: answer 503
        answer_503(request_id, retry_after=scheduler.retry_after_s(model))
    scheduler.snapshot(now)                     # plain dicts for dashboards and the queue table
    scheduler.reconfigure(new_config, now)      # an operator changed an option

Call `dispatch` after every `submit`, `release`, `cancel`, `expired` and `update_backends`: it fills
every free slot that some waiting request can use and returns what it granted. See docs/scheduler.md
for the policy and its knobs, and DESIGN section 5 for the definitions the tests pin down.
"""

from scheduler.backends import BackendState
from scheduler.cost import TYPICAL_COMPLETION_TOKENS, expected_cost
from scheduler.wdrr import Grant, NoBackend, QueueFull, Rejected, Scheduler, SchedulerConfig

__all__ = [
    "TYPICAL_COMPLETION_TOKENS",
    "BackendState",
    "Grant",
    "NoBackend",
    "QueueFull",
    "Rejected",
    "Scheduler",
    "SchedulerConfig",
    "expected_cost",
]
