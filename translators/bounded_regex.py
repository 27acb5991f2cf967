"""Regular expressions from callers' schemas, matched in time linear in the text.

Python's `re` backtracks: `^(a+)+$` against thirty `a` and a `!` runs for minutes, and both the
pattern (a caller's JSON schema) and the text (a model the caller steers) are the caller's. So a
schema's `pattern` and `patternProperties` never reach `re.search`. The pattern is parsed by Python's
own regex parser (the syntax jsonschema would accept), compiled into a Thompson NFA, and matched by
keeping every live state at once: each character costs at most one step per state, and the steps are
charged to the caller's budget. Constructs an NFA cannot express (backreferences, lookaround,
conditionals, atomic groups, possessive repeats) and flags that change matching (`(?i)`, `(?m)`,
`(?s)`, `(?a)`) are refused when the request arrives.
"""

from __future__ import annotations

import re
from functools import lru_cache
from re import _constants as sre  # the parser's opcodes; stable within a Python minor version
from re import _parser as sre_parser
from typing import Protocol

MAX_PATTERN_LENGTH = 1000
# States after counted repeats are unrolled (`x{2,500}` is 500 copies of x): bounds the steps per character.
MAX_STATES = 2000
_UNSUPPORTED_FLAGS = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.ASCII | re.LOCALE


class UnsafePattern(ValueError):
    """The pattern cannot be matched in bounded time; the message says why."""


class StepBudget(Protocol):
    def spend(self, steps: int) -> None: ...


# NFA states: (CHAR, test, next) consumes one character; (SPLIT, nexts) and (ASSERT, where, next)
# consume nothing; (MATCH,) accepts.
CHAR, SPLIT, ASSERT, MATCH = range(4)


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


_CATEGORIES = {
    sre.CATEGORY_DIGIT: str.isdecimal,
    sre.CATEGORY_NOT_DIGIT: lambda char: not char.isdecimal(),
    sre.CATEGORY_SPACE: str.isspace,
    sre.CATEGORY_NOT_SPACE: lambda char: not char.isspace(),
    sre.CATEGORY_WORD: _is_word,
    sre.CATEGORY_NOT_WORD: lambda char: not _is_word(char),
}


class _CharSet:
    """A `[...]` class (and \\d, \\w, \\s, which the parser turns into one-element classes)."""

    __slots__ = ("negate", "chars", "ranges", "categories")

    def __init__(self, items: list) -> None:
        self.negate = False
        self.chars: set[str] = set()
        self.ranges: list[tuple[int, int]] = []
        self.categories: list = []
        for op, arg in items:
            if op is sre.NEGATE:
                self.negate = True
            elif op is sre.LITERAL:
                self.chars.add(chr(arg))
            elif op is sre.RANGE:
                self.ranges.append(arg)
            elif op is sre.CATEGORY and arg in _CATEGORIES:
                self.categories.append(_CATEGORIES[arg])
            else:
                raise UnsafePattern(f"unsupported character class item {op}")

    def __call__(self, char: str) -> bool:
        found = (
            char in self.chars
            or any(low <= ord(char) <= high for low, high in self.ranges)
            or any(category(char) for category in self.categories)
        )
        return found is not self.negate


def _test_for(op, arg):
    if op is sre.LITERAL:
        literal = chr(arg)
        return literal.__eq__
    if op is sre.NOT_LITERAL:
        literal = chr(arg)
        return literal.__ne__
    if op is sre.ANY:
        return "\n".__ne__
    return _CharSet(arg)


def _at(where, text: str, position: int) -> bool:
    size = len(text)
    if where in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
        return position == 0
    if where is sre.AT_END:
        return position == size or (position == size - 1 and text[position] == "\n")
    if where is sre.AT_END_STRING:
        return position == size
    before = position > 0 and _is_word(text[position - 1])
    after = position < size and _is_word(text[position])
    if where is sre.AT_BOUNDARY:
        return before != after
    if where is sre.AT_NON_BOUNDARY:
        return before == after
    raise UnsafePattern(f"unsupported anchor {where}")


class BoundedPattern:
    """`search(text, budget)` answers what `re.search(pattern, text) is not None` would."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.states: list[list] = [[MATCH]]
        parsed = sre_parser.parse(pattern)
        if parsed.state.flags & _UNSUPPORTED_FLAGS:
            raise UnsafePattern("inline flags (?i), (?m), (?s), (?a) and (?L) are not supported")
        self.start = self._sequence(list(parsed), 0)
        first = parsed[0] if len(parsed) else None
        self.anchored = (
            first is not None
            and first[0] is sre.AT
            and first[1]
            in (
                sre.AT_BEGINNING,
                sre.AT_BEGINNING_STRING,
            )
        )

    # -- compiling: each piece is built in front of its continuation `out` ----------------------------

    def _new(self, state: list) -> int:
        if len(self.states) >= MAX_STATES:
            raise UnsafePattern(f"it unrolls into more than {MAX_STATES} states (lower the repeat counts)")
        self.states.append(state)
        return len(self.states) - 1

    def _sequence(self, items: list, out: int) -> int:
        for op, arg in reversed(items):
            out = self._item(op, arg, out)
        return out

    def _item(self, op, arg, out: int) -> int:
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
            return self._new([CHAR, _test_for(op, arg), out])
        if op is sre.AT:
            _at(arg, "", 0)  # refuses anchors it does not know
            return self._new([ASSERT, arg, out])
        if op is sre.BRANCH:
            return self._new([SPLIT, [self._sequence(list(branch), out) for branch in arg[1]]])
        if op is sre.SUBPATTERN:
            _, add_flags, del_flags, body = arg
            if add_flags or del_flags:
                raise UnsafePattern("scoped flags (?i:...) are not supported")
            return self._sequence(list(body), out)
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):  # greedy or lazy: the same set of matches
            return self._repeat(*arg, out)
        names = {
            sre.GROUPREF: "backreferences",
            sre.GROUPREF_EXISTS: "conditionals",
            sre.ASSERT: "lookaround",
            sre.ASSERT_NOT: "lookaround",
            sre.POSSESSIVE_REPEAT: "possessive repeats",
            sre.ATOMIC_GROUP: "atomic groups",
        }
        raise UnsafePattern(f"{names.get(op, op)} cannot be matched in bounded time")

    def _repeat(self, low: int, high, body: list, out: int) -> int:
        items = list(body)
        if high == sre.MAXREPEAT:
            loop = self._new([SPLIT, [None, out]])
            loop_state = self.states[loop]
            loop_state[1][0] = self._sequence(items, loop)
            out = loop
        else:
            if high - low > MAX_STATES:
                raise UnsafePattern(f"a repeat of up to {high} unrolls into more than {MAX_STATES} states")
            follow = out
            for _ in range(high - low):
                out = self._new([SPLIT, [self._sequence(items, out), follow]])
        if low > MAX_STATES:
            raise UnsafePattern(f"a repeat of at least {low} unrolls into more than {MAX_STATES} states")
        for _ in range(low):
            out = self._sequence(items, out)
        return out

    # -- matching ------------------------------------------------------------------------------------

    def _close(self, state: int, text: str, position: int, into: list[int], seen: set[int]) -> bool:
        """Adds the consuming states reachable from `state` without input; True when MATCH is reachable."""
        matched = False
        stack = [state]
        states = self.states
        while stack:
            index = stack.pop()
            if index in seen:
                continue
            seen.add(index)
            node = states[index]
            kind = node[0]
            if kind is CHAR:
                into.append(index)
            elif kind is SPLIT:
                stack.extend(reversed(node[1]))
            elif kind is ASSERT:
                if _at(node[1], text, position):
                    stack.append(node[2])
            else:
                matched = True
        return matched

    def search(self, text: str, budget: StepBudget) -> bool:
        states = self.states
        current: list[int] = []
        seen: set[int] = set()
        if self._close(self.start, text, 0, current, seen):
            return True
        for position, char in enumerate(text):
            budget.spend(len(current) + 1)
            following: list[int] = []
            seen = set()
            for index in current:
                node = states[index]
                if node[1](char) and self._close(node[2], text, position + 1, following, seen):
                    return True
            if not self.anchored and self._close(self.start, text, position + 1, following, seen):
                return True
            if not following and self.anchored:
                return False
            current = following
        return False


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> BoundedPattern:
    """The bounded matcher for `pattern`, or UnsafePattern saying why there is none."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise UnsafePattern(f"it is {len(pattern)} characters long; the limit is {MAX_PATTERN_LENGTH}")
    try:
        return BoundedPattern(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise UnsafePattern(f"it is not a valid regular expression ({exc})") from exc
