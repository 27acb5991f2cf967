"""Model catalogs in both dialects, and `.env` handling."""

from __future__ import annotations

import json
import os

from mitmproxy.test import tflow

from addons.context import CONTEXT_KEY, RequestContext
from addons.local import Local
from addons.polling import ModelView
from addons.registry import BackendRegistry, BackendView
from addons.routing import route_for
from store.environment import load_dotenv
from translators.catalog import CatalogEntry, ollama_ps, ollama_tags, openai_models

# The shape of one /api/tags entry, from the Ollama API reference (docs/api.md, "List Local Models").
OLLAMA_TAG = {
    "name": "llama3.2:latest", "model": "llama3.2:latest", "modified_at": "2024-10-01T12:00:00Z",
    "size": 2019393189, "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
    "details": {"format": "gguf", "family": "llama", "families": ["llama"], "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M"},
}


def entries() -> list[CatalogEntry]:
    return [
        CatalogEntry("llama3.2:latest", "ollama", resident=True, size_bytes=OLLAMA_TAG["size"], vram_bytes=10,
                     details=OLLAMA_TAG),
        CatalogEntry("Qwen/Qwen2.5-0.5B-Instruct", "vllm", resident=True, context_length=32768,
                     details={"id": "Qwen/Qwen2.5-0.5B-Instruct", "created": 1700000000, "owned_by": "vllm"}),
    ]


def test_openai_listing_names_every_model_with_vllm_context_length():
    listing = openai_models(entries(), created=1)
    assert listing["object"] == "list"
    by_id = {item["id"]: item for item in listing["data"]}
    assert by_id["Qwen/Qwen2.5-0.5B-Instruct"]["max_model_len"] == 32768
    assert by_id["llama3.2:latest"]["owned_by"] == "mindrouter"


def test_ollama_tags_keep_the_nodes_entry_and_give_vllm_models_the_same_shape():
    tags = {tag["name"]: tag for tag in ollama_tags(entries())["models"]}
    assert tags["llama3.2:latest"] == OLLAMA_TAG
    assert set(tags["Qwen/Qwen2.5-0.5B-Instruct"]) == set(OLLAMA_TAG)
    assert tags["Qwen/Qwen2.5-0.5B-Instruct"]["modified_at"] == "2023-11-14T22:13:20Z"


def test_ps_lists_only_resident_models():
    resident = entries()
    resident[1].resident = False
    assert [m["name"] for m in ollama_ps(resident)["models"]] == ["llama3.2:latest"]
    assert ollama_ps(resident)["models"][0]["size_vram"] == 10


def test_dotenv_fills_only_what_the_environment_lacks(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nMR_TEST_A=from-file\nexport MR_TEST_B='quoted value'\nMR_TEST_C=file\n")
    monkeypatch.setenv("MR_TEST_C", "from-environment")
    monkeypatch.delenv("MR_TEST_A", raising=False)
    monkeypatch.delenv("MR_TEST_B", raising=False)
    load_dotenv(env_file)
    assert (os.environ["MR_TEST_A"], os.environ["MR_TEST_B"], os.environ["MR_TEST_C"]) == (
        "from-file", "quoted value", "from-environment")


def test_api_show_asks_the_ollama_node_the_question_alone_in_plain_json():
    """A caller's encodings, byte-order marks and extra fields reach no node (a node choking on them would
    answer 500)."""
    node = BackendView(id=1, name="ollama-1", url="http://10.0.0.7:11434", engine="ollama", max_concurrent=2,
                       enabled=True, draining=False, priority=0, healthy=True,
                       models={"qwen2.5vl:latest": ModelView("qwen2.5vl:latest")})
    registry = BackendRegistry(writer=None)
    registry.views = {node.id: node}
    flow = tflow.tflow()
    flow.request.path = "/api/show"
    flow.request.headers["Content-Encoding"] = "zstd"
    flow.request.raw_content = b'\xef\xbb\xbf{"model": "qwen2.5vl", "verbose": true, "x": [1]}'
    flow.metadata[CONTEXT_KEY] = RequestContext("r1", route_for("POST", "/api/show"), "127.0.0.1")
    Local(registry).request(flow)
    assert flow.response is None and (flow.request.host, flow.request.port) == ("10.0.0.7", 11434)
    assert json.loads(flow.request.content) == {"model": "qwen2.5vl", "verbose": True}
    assert dict(flow.request.headers) == {"host": "10.0.0.7:11434", "content-type": "application/json",
                                          "content-length": str(len(flow.request.content))}
