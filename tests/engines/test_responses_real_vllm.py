"""The official openai client's `responses.create` through the gateway to real vLLM.

The gateway translates a Responses request into a chat for the engine, so every answer is compared with
vLLM's own answer to that chat sent straight to the engine: greedy decoding (temperature 0) makes the
text reproducible, and usage must be exactly the engine's count.
"""

from __future__ import annotations

import json

MAX_TOKENS = 24
QUESTION = "Name one river in Idaho and say one thing about it."
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False},
}
YES_NO = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}


def chat_of(model: str, messages: list[dict], **extra) -> dict:
    return {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, **extra}


def ask(openai_client, model: str, **extra):
    return openai_client.responses.create(model=model, max_output_tokens=MAX_TOKENS, temperature=0, **extra)


def test_text_and_usage_equal_vllms_own_chat_answer(openai_client, vllm, chat_model):
    direct = vllm.answer("/v1/chat/completions", chat_of(chat_model, [{"role": "user", "content": QUESTION}]))
    response = ask(openai_client, chat_model, input=QUESTION)
    assert response.output_text == direct["choices"][0]["message"]["content"]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        direct["usage"]["prompt_tokens"], direct["usage"]["completion_tokens"])
    assert response.status == ("incomplete" if direct["choices"][0]["finish_reason"] == "length" else "completed")


def test_a_stream_concatenates_to_the_same_text_and_ends_with_vllms_usage(openai_client, vllm, chat_model):
    direct = vllm.answer("/v1/chat/completions", chat_of(chat_model, [{"role": "user", "content": QUESTION}]))
    events = list(ask(openai_client, chat_model, input=QUESTION, stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == direct["choices"][0]["message"]["content"]
    assert events[-1].response.usage.input_tokens == direct["usage"]["prompt_tokens"]
    assert events[-1].response.usage.output_tokens == direct["usage"]["completion_tokens"]


def test_a_function_tool_reaches_vllm_which_answers_as_it_would_a_chat(openai_client, vllm, chat_model):
    # SmolLM2 starts a hermes-format call as text that the token cap cuts before the parser could take it:
    # the same text, and the same prompt count (the tool rendered alike), as vLLM's own chat answer.
    ask_weather = "What is the weather in Boise?"
    chat_tool = {"type": "function", "function": {key: WEATHER_TOOL[key] for key in ("name", "description", "parameters")}}
    direct = vllm.answer("/v1/chat/completions", chat_of(
        chat_model, [{"role": "user", "content": ask_weather}], tools=[chat_tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    response = ask(openai_client, chat_model, input=ask_weather, tools=[WEATHER_TOOL],
                   tool_choice={"type": "function", "name": "get_weather"})
    assert response.output_text == direct["choices"][0]["message"]["content"] and "get_weather" in response.output_text
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        direct["usage"]["prompt_tokens"], direct["usage"]["completion_tokens"])


def test_structured_output_is_vllms_and_matches_the_schema(openai_client, vllm, chat_model):
    question = "Is the Snake River in Idaho? Answer as JSON."
    direct = vllm.answer("/v1/chat/completions", chat_of(
        chat_model, [{"role": "user", "content": question}], max_tokens=32,
        response_format={"type": "json_schema", "json_schema": {"name": "yes_no", "schema": YES_NO, "strict": True}}))
    response = openai_client.responses.create(
        model=chat_model, input=question, temperature=0, max_output_tokens=32,
        text={"format": {"type": "json_schema", "name": "yes_no", "schema": YES_NO, "strict": True}})
    assert response.output_text == direct["choices"][0]["message"]["content"]
    assert json.loads(response.output_text)["answer"] in ("yes", "no")


def test_previous_response_id_over_three_turns_is_vllms_answer_to_the_whole_conversation(
        openai_client, vllm, chat_model):
    turns = ["My name is Ada.", "I live in Moscow, Idaho.", "Where do I live?"]
    first = ask(openai_client, chat_model, input=turns[0])
    second = ask(openai_client, chat_model, input=turns[1], previous_response_id=first.id)
    third = ask(openai_client, chat_model, input=turns[2], previous_response_id=second.id)
    conversation = [{"role": "user", "content": turns[0]}, {"role": "assistant", "content": first.output_text},
                    {"role": "user", "content": turns[1]}, {"role": "assistant", "content": second.output_text},
                    {"role": "user", "content": turns[2]}]
    direct = vllm.answer("/v1/chat/completions", chat_of(chat_model, conversation))
    assert third.output_text == direct["choices"][0]["message"]["content"]
    assert third.usage.input_tokens == direct["usage"]["prompt_tokens"]
