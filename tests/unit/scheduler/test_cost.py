"""Expected cost of a request before it runs: prompt plus expected completion, capped by max_tokens."""

from scheduler import TYPICAL_COMPLETION_TOKENS, expected_cost


def test_cost_without_max_tokens_assumes_a_typical_completion():
    assert expected_cost(300, None) == 300 + TYPICAL_COMPLETION_TOKENS


def test_max_tokens_caps_the_expected_completion():
    assert expected_cost(300, 20) == 320


def test_max_tokens_above_the_typical_completion_does_not_raise_the_guess():
    assert expected_cost(300, 8000) == 300 + TYPICAL_COMPLETION_TOKENS


def test_embedding_costs_its_input_alone():
    assert expected_cost(300, None, generates=False) == 300


def test_cost_is_never_below_one_token():
    assert expected_cost(0, 0) == 1
