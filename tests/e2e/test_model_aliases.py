"""Model aliases an admin defines resolve on every endpoint of both dialects and can be re-pointed."""

from __future__ import annotations

import secrets

import httpx
import ollama
import openai
import pytest

from sim import generation
from sim.stack import wait_until

OLLAMA_CHAT = "llama3.2"
VLLM_CHAT = "Qwen/Qwen2.5-0.5B-Instruct"


def admin(cluster, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{cluster.gateway_url}/admin{path}", timeout=10,
                         headers={"Authorization": f"Bearer {cluster.keys['admin']}"}, **kwargs)


def listed(cluster, alias: str) -> dict | None:
    models = httpx.get(f"{cluster.gateway_url}/v1/models", timeout=5,
                       headers={"Authorization": f"Bearer {cluster.keys['student1']}"}).json()["data"]
    return next((model for model in models if model["id"] == alias), None)


@pytest.fixture
def alias(cluster):
    """A fresh alias name, deleted after the test."""
    name = f"coder-{secrets.token_hex(3)}"
    yield name
    admin(cluster, "DELETE", f"/aliases/{name}")


def test_an_alias_answers_in_both_dialects_and_follows_when_re_pointed(cluster, alias):
    created = admin(cluster, "PUT", f"/aliases/{alias}", json={"model": VLLM_CHAT})
    assert created.status_code == 201 and created.json()["model"] == VLLM_CHAT
    wait_until(lambda: listed(cluster, alias) is not None, 15, f"{alias} in /v1/models")
    client = openai.OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key=cluster.keys["student1"], max_retries=0)
    ollama_client = ollama.Client(host=cluster.gateway_url,
                                  headers={"Authorization": f"Bearer {cluster.keys['student1']}"})
    prompt = "Which model are you?"
    answer = client.chat.completions.create(model=alias, messages=[{"role": "user", "content": prompt}])
    assert answer.choices[0].message.content == generation.reply_text(VLLM_CHAT, prompt)
    assert answer.model == VLLM_CHAT  # vLLM's own answer, passed through, names the model behind the alias
    assert ollama_client.chat(model=alias, messages=[{"role": "user", "content": prompt}]).message.content == \
        generation.reply_text(VLLM_CHAT, prompt)
    assert client.responses.create(model=alias, input=prompt).output_text == generation.reply_text(VLLM_CHAT, prompt)
    assert any(tag.model == alias for tag in ollama_client.list().models)

    re_pointed = admin(cluster, "PUT", f"/aliases/{alias}", json={"model": OLLAMA_CHAT})
    assert re_pointed.status_code == 200 and re_pointed.json()["model"] == OLLAMA_CHAT
    wait_until(lambda: client.chat.completions.create(model=alias, messages=[{"role": "user", "content": prompt}])
               .choices[0].message.content == generation.reply_text(OLLAMA_CHAT, prompt), 15, "the re-pointed alias")
    assert ollama_client.generate(model=alias, prompt=prompt).response == generation.reply_text(OLLAMA_CHAT, prompt)
    assert ollama_client.show(alias).capabilities  # /api/show answers for the model it names


def test_an_alias_of_an_embedding_model_embeds(cluster, alias):
    admin(cluster, "PUT", f"/aliases/{alias}", json={"model": "intfloat/e5-small"}).raise_for_status()
    wait_until(lambda: listed(cluster, alias) is not None, 15, f"{alias} in /v1/models")
    client = openai.OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key=cluster.keys["student1"], max_retries=0)
    vector = client.embeddings.create(model=alias, input="hello").data[0].embedding
    assert vector == pytest.approx(generation.embedding_for("intfloat/e5-small", "hello"), abs=1e-7)


def test_the_alias_api_lists_refuses_bad_names_and_chains_and_deletes(cluster, alias):
    assert admin(cluster, "PUT", f"/aliases/{alias}", json={"model": VLLM_CHAT}).status_code == 201
    assert {"alias": alias, "model": VLLM_CHAT} in [
        {key: row[key] for key in ("alias", "model")} for row in admin(cluster, "GET", "/aliases").json()["aliases"]]
    chained = admin(cluster, "PUT", "/aliases/chained", json={"model": alias})
    assert chained.status_code == 422 and "itself an alias" in chained.json()["error"]["message"]
    assert admin(cluster, "PUT", "/aliases/bad name", json={"model": VLLM_CHAT}).status_code == 422
    assert admin(cluster, "PUT", f"/aliases/{alias}", json={}).status_code == 400
    student = httpx.put(f"{cluster.gateway_url}/admin/aliases/{alias}", json={"model": OLLAMA_CHAT}, timeout=10,
                        headers={"Authorization": f"Bearer {cluster.keys['student1']}"})
    assert student.status_code == 403
    assert admin(cluster, "DELETE", f"/aliases/{alias}").json() == {"alias": alias, "deleted": True}
    assert admin(cluster, "DELETE", f"/aliases/{alias}").status_code == 404
    wait_until(lambda: listed(cluster, alias) is None, 15, f"{alias} gone from /v1/models")
