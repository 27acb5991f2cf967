"""The pure contract the simulated nodes answer from: texts, pieces and token counts."""

from __future__ import annotations

import json
import math
import struct

import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from sim import generation
from sim.generation import Turn


@given(st.text())
def test_split_tokens_gives_one_piece_per_word_that_concatenate_back_to_the_text(text):
    pieces = generation.split_tokens(text)
    assert len(pieces) == generation.count_text_tokens(text)
    if pieces:
        assert "".join(pieces) == text


def test_text_tokens_are_whitespace_separated_words():
    assert generation.count_text_tokens("why is  the sky\nblue?") == 5
    assert generation.count_text_tokens("   ") == 0


def test_chat_prompt_counts_words_message_overhead_images_and_tools():
    turns = [Turn("system", "be brief"), Turn("user", "what is this", images=2)]
    expected = (2 + 3) + 2 * generation.MESSAGE_OVERHEAD_TOKENS + 2 * generation.IMAGE_TOKENS
    assert generation.count_chat_prompt_tokens(turns) == expected
    assert generation.count_chat_prompt_tokens(turns, tools=3) == expected + 3 * generation.TOKENS_PER_TOOL


def test_openai_and_ollama_messages_reduce_to_the_same_turns():
    openai_messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is"},
                {"type": "text", "text": "this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    ollama_messages = [
        {"role": "user", "content": "what is\nthis", "images": ["AAAA"]},
        {"role": "assistant"},
    ]
    assert generation.turns_from_openai(openai_messages) == generation.turns_from_ollama(ollama_messages)


def test_reply_is_deterministic_and_depends_on_model_and_prompt():
    first = generation.reply_text("llama3.2", "why is the sky blue?")
    assert first == generation.reply_text("llama3.2", "why is the sky blue?")
    assert first == generation.reply_text("llama3.2:latest", "why is the sky blue?")
    assert first != generation.reply_text("qwen2.5", "why is the sky blue?")
    assert first != generation.reply_text("llama3.2", "why is grass green?")
    assert first.endswith(".") and 8 <= generation.count_text_tokens(first) <= 40


def test_max_tokens_cuts_the_reply_and_reports_length():
    natural = generation.reply_pieces("m", "p")
    completion = generation.complete("m", "p", max_tokens=3)
    assert completion.content_pieces == tuple(natural[:3])
    assert (completion.finish_reason, completion.completion_tokens) == ("length", 3)
    assert generation.complete("m", "p", max_tokens=len(natural)).finish_reason == "stop"


def test_ignore_eos_generates_exactly_max_tokens_continuing_the_same_words():
    natural = generation.reply_pieces("m", "p")
    completion = generation.complete("m", "p", max_tokens=len(natural) + 50, ignore_eos=True)
    assert (completion.completion_tokens, completion.finish_reason) == (len(natural) + 50, "length")
    assert completion.content.startswith("".join(natural))


def test_stop_string_cuts_before_it_but_its_tokens_still_count():
    pieces = generation.reply_pieces("m", "p")
    stop = pieces[2] + pieces[3]  # spans two pieces, starting with a space
    completion = generation.complete("m", "p", stop=[stop, "never-appears"])
    assert completion.content == "".join(pieces[:2])
    assert completion.completion_tokens == 4
    assert completion.finish_reason == "stop"


def test_thinking_comes_first_and_counts_toward_the_budget():
    thinking = generation.split_tokens(generation.thinking_text("m", "p"))
    completion = generation.complete("m", "p", think=True, max_tokens=len(thinking) + 2)
    assert completion.reasoning_pieces == tuple(thinking)
    assert completion.content == generation.reply_text("m", "p", max_tokens=2)
    assert completion.completion_tokens == len(thinking) + 2


def test_json_mode_answers_a_json_object_holding_the_reply():
    completion = generation.complete("m", "p", output_format="json")
    assert completion.content == generation.json_text("m", "p")
    assert json.loads(completion.content) == {"response": generation.reply_text("m", "p")}


def test_tool_call_arguments_validate_against_the_function_parameters():
    # The weather tool of Ollama's API reference (docs/api.md, "Chat request (with tools)").
    function = {
        "name": "get_current_weather",
        "description": "Get the current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The location to get the weather for"},
                "format": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "format"],
        },
    }
    completion = generation.complete("m", "What is the weather today in Paris?", tool=function)
    call = completion.tool_call
    assert call.name == "get_current_weather"
    jsonschema.validate(call.arguments, function["parameters"])
    assert "".join(call.argument_pieces) == call.arguments_json
    assert completion.completion_tokens == 1 + len(call.argument_pieces)


def test_embeddings_are_unit_length_float32_and_differ_by_text():
    vector = generation.embedding_for("all-minilm", "Why is the sky blue?")
    assert len(vector) == generation.EMBEDDING_DIMENSIONS
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-5)
    assert list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector))) == vector
    assert vector != generation.embedding_for("all-minilm", "Why is the grass green?")
    assert len(generation.embedding_for("all-minilm", "x", dimensions=8)) == 8
