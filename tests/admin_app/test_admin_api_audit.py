"""Audit search and detail through the admin API, over request rows seeded straight into the store,
and artifact downloads that never leave ARTIFACT_STORAGE_PATH."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest

from admin_app.accounts import issue_key
from store.models import Artifact, Backend, Request, RequestArtifact, RequestBody
from tests.admin_app.api_assertions import assert_api_error

T0 = dt.datetime(2025, 3, 1, 12, 0, 0)


@pytest.fixture
def record(app):
    """Writes one audit row as the gateway would: request, body, artifact links."""
    count = [0]

    def record(at=T0, prompt="", response="", artifacts=(), **fields):
        count[0] += 1
        row = Request.create(
            request_id=fields.pop("request_id", f"req{count[0]:04d}"),
            endpoint=fields.pop("endpoint", "/v1/chat/completions"),
            client_dialect=fields.pop("client_dialect", "openai"),
            created_at=at,
            **{"model": "llama3.2", "status": 200, **fields},
        )
        RequestBody.create(request=row, prompt=prompt, response=response)
        for artifact in artifacts:
            RequestArtifact.create(request=row, artifact=artifact)
        return row

    return record


@pytest.fixture
def store_artifact(app):
    root = Path(app.config["ARTIFACT_STORAGE_PATH"])

    def store_artifact(data: bytes, content_type: str = "image/png", path: str | None = None) -> Artifact:
        sha256 = hashlib.sha256(data).hexdigest()
        relative = path or f"{sha256[:2]}/{sha256}"
        if path is None:
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(data)
        return Artifact.create(sha256=sha256, content_type=content_type, size_bytes=len(data), path=relative)

    return store_artifact


@pytest.fixture
def search(client, admin_headers):
    def search(query: str = "") -> dict:
        response = client.get(f"/admin/audit/search?{query}", headers=admin_headers)
        assert response.status_code == 200, response.data
        return response.get_json()

    return search


def ids(found: dict) -> list[str]:
    return [row["request_id"] for row in found["results"]]


def test_each_filter_narrows_the_results(search, record, make_user):
    ada, bob = make_user("ada", "staff"), make_user("bob", "student")
    gpu1 = Backend.create(name="gpu1", url="http://gpu1:11434", engine="ollama")
    gpu2 = Backend.create(name="gpu2", url="http://gpu2:8000", engine="vllm")
    record(request_id="a", user=ada, backend=gpu1, model="llama3.2", status=200, at=T0)
    record(request_id="b", user=ada, backend=gpu2, model="qwen2.5", status=429, at=T0 + dt.timedelta(hours=1))
    record(request_id="c", user=bob, backend=gpu1, model="qwen2.5", status=502, at=T0 + dt.timedelta(hours=2))
    record(
        request_id="d", user=bob, backend=None, model="llama3.2", status=503, at=T0 + dt.timedelta(hours=3)
    )

    assert ids(search()) == ["d", "c", "b", "a"]  # newest first
    assert ids(search("user=ada")) == ["b", "a"]
    assert ids(search("model=qwen2.5")) == ["c", "b"]
    assert ids(search("backend=gpu1")) == ["c", "a"]
    assert ids(search("status=429")) == ["b"]
    assert ids(search("status=5xx")) == ["d", "c"]
    assert ids(search("since=2025-03-01T13:00:00Z")) == ["d", "c", "b"]
    assert ids(search("until=2025-03-01T13:00:00")) == ["a"]  # until is exclusive
    assert ids(search("since=2025-03-01T14:00:00%2B01:00")) == ["d", "c", "b"]  # 13:00 UTC
    assert ids(search("user=bob&model=llama3.2&status=5xx")) == ["d"]
    assert search("user=ada&backend=gpu1&status=4xx")["total"] == 0


def test_text_search_ignores_case_in_prompts_and_responses(search, record):
    record(request_id="p", prompt="Explain the KV-Cache please")
    record(request_id="r", response="The kv-cache holds keys and values")
    record(request_id="u", prompt="Une ÉCOLE à Paris")
    record(request_id="n", prompt="nothing relevant")

    assert ids(search("q=kv-cache")) == ["r", "p"]
    assert ids(search("q=KV-CACHE")) == ["r", "p"]
    assert ids(search("q=école")) == ["u"]  # beyond ASCII, the same on SQLite and MariaDB
    assert ids(search("q=ecole")) == []  # accents count, on both
    assert ids(search("q=holds%20KEYS")) == ["r"]


def test_text_search_takes_like_wildcards_literally(search, record):
    record(request_id="pct", prompt="a 100% sure answer")
    record(request_id="num", prompt="a 1000 token answer")
    record(request_id="und", prompt="snake_case")
    record(request_id="sp", prompt="snake case")
    record(request_id="bs", prompt=r"C:\temp")

    assert ids(search("q=100%25")) == ["pct"]
    assert ids(search("q=e_c")) == ["und"]
    assert ids(search("q=%25")) == ["pct"]
    assert ids(search("q=" + "C:%5Ctemp")) == ["bs"]


def test_pagination_counts_every_match(search, record):
    for minute in range(7):
        record(request_id=f"m{minute}", at=T0 + dt.timedelta(minutes=minute))
    record(request_id="other", model="qwen2.5")

    first = search("model=llama3.2&per_page=3")
    assert (first["total"], first["pages"], first["page"], first["per_page"]) == (7, 3, 1, 3)
    assert ids(first) == ["m6", "m5", "m4"]
    assert ids(search("model=llama3.2&per_page=3&page=3")) == ["m0"]
    assert search("model=llama3.2&per_page=3&page=4")["results"] == []
    assert search()["per_page"] == 50 and search()["total"] == 8


def test_results_carry_tokens_timings_and_artifact_hashes(search, record, store_artifact, make_user):
    ada = make_user("ada", "staff")
    key = issue_key(ada)
    image = store_artifact(b"\x89PNG fake")
    record(
        request_id="full",
        user=ada,
        api_key=ada.api_keys.get(),
        stream=True,
        queue_ms=12.5,
        ttft_ms=80.0,
        total_ms=950.0,
        prompt_tokens=30,
        completion_tokens=12,
        client_address="10.1.2.3",
        backend_dialect="ollama",
        artifacts=[image],
    )
    (row,) = search()["results"]
    assert row["user"] == "ada" and row["api_key"] == f"mr_{key[3:11]}_…" and key not in json.dumps(row)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (30, 12, 42)
    assert (row["queue_ms"], row["ttft_ms"], row["total_ms"]) == (12.5, 80.0, 950.0)
    assert row["artifacts"] == [image.sha256]
    assert (row["stream"], row["client_address"], row["created_at"]) == (
        True,
        "10.1.2.3",
        "2025-03-01T12:00:00Z",
    )


BAD_FILTERS = [
    ("since=yesterday", "since"),
    ("until=2025-02-30", "until"),
    ("since=2025-03-02&until=2025-03-01", "until"),
    ("status=ok", "status"),
    ("status=6xx", "status"),
    ("per_page=201", "per_page"),
    ("per_page=0", "per_page"),
    ("page=-1", "page"),
    ("user=ghost", "user"),
    ("backend=nowhere", "backend"),
    ("usr=ada", "usr"),
    ("q=" + "x" * 501, "q"),
]


def test_a_bad_filter_is_400_naming_it(client, admin_headers):
    for query, param in BAD_FILTERS:
        response = client.get(f"/admin/audit/search?{query}", headers=admin_headers)
        error = assert_api_error(response, 400, "invalid_filter")
        assert error["param"] == param, (query, error)
        assert error["message"], query


def test_the_audit_needs_an_admin(client, make_user, record):
    record(request_id="secret", prompt="private")
    assert_api_error(client.get("/admin/audit/search"), 401)
    headers = {"X-API-Key": issue_key(make_user("stu", "student"))}
    assert_api_error(client.get("/admin/audit/search", headers=headers), 403)
    assert_api_error(client.get("/admin/audit/secret", headers=headers), 403)


def test_detail_has_the_bodies_validation_and_artifacts(client, admin_headers, record, store_artifact):
    image = store_artifact(b"\x89PNG detail")
    row = record(request_id="det", prompt="describe this image", response="a cat", artifacts=[image])
    RequestBody.update(validation=json.dumps({"valid": False, "errors": ["missing 'name'"]})).where(
        RequestBody.request == row.id
    ).execute()

    detail = client.get("/admin/audit/det", headers=admin_headers).get_json()
    assert (detail["prompt"], detail["response"]) == ("describe this image", "a cat")
    assert detail["validation"] == {"valid": False, "errors": ["missing 'name'"]}
    (artifact,) = detail["artifacts"]
    assert artifact["sha256"] == image.sha256 and artifact["content_type"] == "image/png"
    assert artifact["download"] == f"/admin/artifacts/{image.sha256}"
    assert_api_error(client.get("/admin/audit/nope", headers=admin_headers), 404, "request_not_found")


def test_an_artifact_downloads_with_its_content_type(client, admin_headers, store_artifact):
    image = store_artifact(b"\x89PNG bytes", "image/png")
    response = client.get(f"/admin/artifacts/{image.sha256}", headers=admin_headers)
    assert response.status_code == 200
    assert response.data == b"\x89PNG bytes" and response.mimetype == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "attachment" not in response.headers.get("Content-Disposition", "")

    page = store_artifact(b"<script>alert(1)</script>", "text/html")
    html = client.get(f"/admin/artifacts/{page.sha256}", headers=admin_headers)
    assert html.status_code == 200 and html.mimetype == "text/html"
    assert html.headers["Content-Disposition"].startswith("attachment")
    assert "sandbox" in html.headers["Content-Security-Policy"]


def test_an_artifact_path_cannot_leave_the_storage_directory(
    client, admin_headers, store_artifact, tmp_path, app
):
    outside = tmp_path / "outside.txt"
    outside.write_text("not an artifact")
    storage = Path(app.config["ARTIFACT_STORAGE_PATH"])
    storage.mkdir(parents=True, exist_ok=True)
    (storage / "link").symlink_to(outside)
    for index, path in enumerate(["../outside.txt", str(outside), "link", "a/../../outside.txt"]):
        artifact = store_artifact(f"evil {index}".encode(), "text/plain", path=path)
        response = client.get(f"/admin/artifacts/{artifact.sha256}", headers=admin_headers)
        assert_api_error(response, 404, "artifact_file_missing")
        assert b"not an artifact" not in response.data


def test_artifact_download_errors(client, admin_headers, store_artifact, make_user, app):
    assert client.get("/admin/artifacts/..%2F..%2Fetc%2Fpasswd", headers=admin_headers).status_code == 404
    assert_api_error(client.get("/admin/artifacts/..", headers=admin_headers), 400, "invalid_sha256")
    assert_api_error(
        client.get("/admin/artifacts/" + "0" * 64, headers=admin_headers), 404, "artifact_not_found"
    )
    gone = store_artifact(b"deleted file")
    (Path(app.config["ARTIFACT_STORAGE_PATH"]) / gone.path).unlink()
    assert_api_error(client.get(f"/admin/artifacts/{gone.sha256}", headers=admin_headers), 404)
    image = store_artifact(b"\x89PNG private")
    headers = {"X-API-Key": issue_key(make_user("stu", "student"))}
    assert_api_error(client.get(f"/admin/artifacts/{image.sha256}", headers=headers), 403)
