"""Every inference request leaves an audit row with its bodies and images, written off the event loop."""

from __future__ import annotations

import base64
import hashlib
import json

import httpx
import ollama
import openai

from sim import generation
from sim.stack import wait_until
from store import init_database
from store.models import ApiKey, Artifact, Request, RequestArtifact, RequestBody

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def audit_rows(cluster, prompt_marker: str, count: int = 1) -> list[Request]:
    """The audit rows of the requests whose prompt holds `prompt_marker`, once `count` are written."""
    init_database(cluster.env["DATABASE_URL"])

    def rows() -> list[Request]:
        query = Request.select().join(RequestBody).where(RequestBody.prompt.contains(prompt_marker))
        return list(query.order_by(Request.id))

    wait_until(lambda: len(rows()) >= count, 10, f"{count} audit rows for {prompt_marker!r}")
    return rows()


def test_a_streamed_chat_is_recorded_with_usage_timings_and_the_delivered_stream(cluster):
    client = openai.OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key=cluster.keys["faculty1"], max_retries=0)
    prompt = "An audited question about barley"
    chunks = list(client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": prompt}],
                                                 stream=True, stream_options={"include_usage": True}))
    (row,) = audit_rows(cluster, prompt)
    body = RequestBody.get(RequestBody.request == row)
    assert (row.endpoint, row.backend_dialect, row.model, row.status, row.stream) == (
        "/v1/chat/completions", "ollama", "llama3.2", 200, True)
    assert row.user.username == "faculty1" and row.api_key.prefix == cluster.keys["faculty1"].split("_")[1]
    assert (row.prompt_tokens, row.completion_tokens) == (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)
    assert 0 <= row.queue_ms <= row.ttft_ms <= row.total_ms
    assert json.loads(body.prompt)["messages"][0]["content"] == prompt
    events = [json.loads(line.removeprefix("data: ")) for line in body.response.splitlines() if line.startswith("data: {")]
    delivered = "".join(choice["delta"].get("content") or "" for event in events for choice in event["choices"])
    assert delivered == generation.reply_text("llama3.2", prompt)
    assert body.response.rstrip().endswith("data: [DONE]")


def test_images_are_stored_once_by_content_and_referenced_from_the_prompt(cluster):
    client = ollama.Client(host=cluster.gateway_url, headers={"Authorization": f"Bearer {cluster.keys['student1']}"})
    image = base64.b64encode(PNG).decode()
    for _ in range(2):
        client.chat(model="qwen2.5vl", stream=False, messages=[{"role": "user", "content": "see twice", "images": [image]}])
    digest = hashlib.sha256(PNG).hexdigest()
    rows = audit_rows(cluster, "see twice", count=2)
    artifact = Artifact.get(Artifact.sha256 == digest)
    stored = (cluster.env["ARTIFACT_STORAGE_PATH"] + "/" + artifact.path)
    assert open(stored, "rb").read() == PNG and artifact.content_type == "image/png"
    assert {link.request_id for link in RequestArtifact.select().where(RequestArtifact.artifact == artifact)} >= {
        row.id for row in rows}
    for row in rows:
        prompt = RequestBody.get(RequestBody.request == row).prompt
        assert image not in prompt and f"artifact:sha256:{digest}" in prompt


def test_refused_requests_are_recorded_too_and_keys_count_their_use(cluster):
    key = cluster.new_key("staff1", "counted")
    client = ollama.Client(host=cluster.gateway_url, headers={"Authorization": f"Bearer {key}"})
    client.generate(model="llama3.2", prompt="counted one", stream=False)
    try:
        client.generate(model="no-such-model", prompt="counted two", stream=False)
    except ollama.ResponseError:
        pass
    (missing,) = audit_rows(cluster, "counted two")
    assert missing.status == 404 and missing.backend is None
    wait_until(lambda: ApiKey.get(ApiKey.prefix == key.split("_")[1]).request_count == 2, 10, "the key's use counted")
    assert ApiKey.get(ApiKey.prefix == key.split("_")[1]).last_used_at is not None


def test_audit_search_finds_words_that_a_stream_split_across_events(cluster):
    """A streamed answer is stored as delivered, one event per token; search also reads its assembled text."""
    prompt = "An audited question about rye"
    client = ollama.Client(host=cluster.gateway_url, headers={"Authorization": f"Bearer {cluster.keys['staff1']}"})
    streamed = "".join(part.message.content for part in client.chat(
        model="qwen2.5vl", messages=[{"role": "user", "content": prompt}], stream=True))
    phrase = " ".join(streamed.split()[2:5])
    (row,) = audit_rows(cluster, prompt)
    body = RequestBody.get(RequestBody.request == row)
    assert phrase not in body.response  # the delivered lines split it
    assert body.response_text == streamed == generation.reply_text("qwen2.5vl", prompt)

    # Other tests' answers on this cluster come from the same small vocabulary and may hold the phrase
    # too; the audit writer keeps order, so every row before ours is stored by now.
    holding_phrase = {stored.request.request_id for stored in RequestBody.select(RequestBody, Request).join(Request)
                      if any(phrase.lower() in (text or "").lower()
                             for text in (stored.prompt, stored.response, stored.response_text))}
    assert row.request_id in holding_phrase
    found = httpx.get(f"{cluster.gateway_url}/admin/audit/search",
                      params={"q": phrase.upper(), "per_page": 100},
                      headers={"Authorization": f"Bearer {cluster.keys['admin']}"})
    assert found.status_code == 200, found.text
    assert {result["request_id"] for result in found.json()["results"]} == holding_phrase
