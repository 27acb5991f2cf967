"""OpenAI's Responses API (`/v1/responses`) through the gateway, by the official `openai` SDK, on both engines."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from sim import generation
from sim.generation import Turn

OLLAMA_CHAT = "llama3.2"
VLLM_CHAT = "Qwen/Qwen2.5-0.5B-Instruct"
WEATHER_TOOL = {  # a function tool in the Responses shape (OpenAI API reference, "Function calling")
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
    "additionalProperties": False,
}
MODELS = pytest.mark.parametrize("model", [VLLM_CHAT, OLLAMA_CHAT])


def client_for(cluster, user: str = "student1") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key=cluster.keys[user], max_retries=0)


@pytest.fixture
def client(cluster):
    return client_for(cluster)


def prompt_tokens(*turns: tuple[str, str]) -> int:
    return generation.count_chat_prompt_tokens([Turn(role, text) for role, text in turns])


@MODELS
def test_text_input_gets_the_models_answer_and_usage(client, model):
    prompt = "Name three rivers in Idaho."
    response = client.responses.create(model=model, input=prompt, instructions="Answer briefly.")
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == generation.reply_text(model, prompt)
    assert response.model == model
    assert response.usage.input_tokens == prompt_tokens(("system", "Answer briefly."), ("user", prompt))
    assert response.usage.output_tokens == len(generation.split_tokens(response.output_text))


@MODELS
def test_a_function_call_and_its_output_make_a_second_turn(client, model):
    question = "What is the weather in Moscow, Idaho?"
    first = client.responses.create(model=model, input=question, tools=[WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert [call.name for call in calls] == ["get_weather"]
    assert json.loads(calls[0].arguments) == generation.tool_arguments(model, question, WEATHER_TOOL)
    second = client.responses.create(model=model, tools=[WEATHER_TOOL], input=[
        {"role": "user", "content": question},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"},
    ])
    assert second.output_text == generation.reply_text(model, "Sunny, 21 C")
    assert not [item for item in second.output if item.type == "function_call"]


@MODELS
def test_structured_output_matches_the_json_schema(client, model):
    response = client.responses.create(model=model, input="A city in Idaho, as JSON.", text={
        "format": {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(response.output_text), CITY_SCHEMA)


@MODELS
def test_a_stream_has_the_responses_events_and_ends_with_usage(client, model):
    prompt = "Describe the Palouse in one paragraph."
    events = list(client.responses.create(model=model, input=prompt, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == generation.reply_text(model, prompt)
    assert kinds.count("response.output_text.delta") > 3  # streamed piece by piece
    completed = events[-1].response
    assert completed.output_text == text and completed.usage.input_tokens == prompt_tokens(("user", prompt))


def test_the_sdks_stream_helper_assembles_the_final_response(client):
    with client.responses.stream(model=VLLM_CHAT, input="Why is the sky blue?") as stream:
        final = stream.get_final_response()
    assert final.output_text == generation.reply_text(VLLM_CHAT, "Why is the sky blue?")


@MODELS
def test_previous_response_id_carries_the_conversation_over_three_turns(client, model):
    turns = ["My name is Ada.", "I study GPUs.", "What do you know about me?"]
    first = client.responses.create(model=model, input=turns[0], instructions="Be kind.")
    second = client.responses.create(model=model, input=turns[1], previous_response_id=first.id)
    third = client.responses.create(model=model, input=turns[2], previous_response_id=second.id)
    assert third.previous_response_id == second.id
    assert third.output_text == generation.reply_text(model, turns[2])
    # The third turn's prompt is the whole conversation; the first turn's instructions are not carried over.
    conversation = [("user", turns[0]), ("assistant", first.output_text), ("user", turns[1]),
                    ("assistant", second.output_text), ("user", turns[2])]
    assert third.usage.input_tokens == prompt_tokens(*conversation)


def test_a_stored_response_can_be_read_back_and_deleted_by_its_owner(client):
    created = client.responses.create(model=VLLM_CHAT, input="Remember this.")
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    assert fetched.usage.total_tokens == created.usage.total_tokens
    deleted = client.responses.delete(created.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_another_user_can_never_read_or_continue_a_stored_response(cluster, client):
    created = client.responses.create(model=VLLM_CHAT, input="A private note.")
    other = client_for(cluster, "faculty1")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model=VLLM_CHAT, input="What did I say?", previous_response_id=created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    assert client.responses.retrieve(created.id).id == created.id  # still there for its owner


def test_store_false_keeps_nothing(client):
    created = client.responses.create(model=VLLM_CHAT, input="Forget this.", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_bad_requests_get_openai_errors(client, cluster):
    with pytest.raises(openai.BadRequestError) as hosted_tool:
        client.responses.create(model=VLLM_CHAT, input="hi", tools=[{"type": "web_search"}])
    assert "function tools only" in hosted_tool.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    answer = httpx.post(f"{cluster.gateway_url}/v1/responses", json={"model": VLLM_CHAT},
                        headers={"Authorization": f"Bearer {cluster.keys['student1']}"}, timeout=30)
    assert answer.status_code in (400, 422) and "input" in answer.json()["error"]["message"]
