"""What a request is expected to cost before it runs, in tokens (DESIGN section 5).

The guess only has to be fair on average: after the request ends, the scheduler charges the
difference to real usage to the user (`Scheduler.release`), so a wrong guess delays a user's
next turns instead of giving it a bigger share.
"""

from __future__ import annotations

# Completion assumed when the caller sets no max_tokens: a typical chat answer.
TYPICAL_COMPLETION_TOKENS = 512


def expected_cost(prompt_tokens: int, max_tokens: int | None, *, generates: bool = True) -> int:
    """Prompt estimate plus the expected completion, capped by `max_tokens`; at least one token.

    Embeddings generate nothing (`generates=False`): their cost is the prompt alone.
    """
    completion = (
        TYPICAL_COMPLETION_TOKENS if max_tokens is None else min(max_tokens, TYPICAL_COMPLETION_TOKENS)
    )
    return max(1, prompt_tokens + (completion if generates else 0))
