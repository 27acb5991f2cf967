"""vLLM's rerank, score and tokenize APIs (`/v1/rerank`, `/v1/score`, `/v1/tokenize` and vLLM's own
`/rerank`, `/score`, `/tokenize`): passed through to a vLLM node that serves them, as the caller wrote them.

No other engine has them, so there is nothing to translate: the gateway reads only what it needs to
route, limit and charge the request (the model, the texts for the prompt estimate) and checks the
fields vLLM requires, so a malformed call is refused before it queues. Shapes from vLLM's docs
("OpenAI-Compatible Server": Re-rank API, Score API, Tokenizer API).
"""

from __future__ import annotations

from translators.canonical import RERANK, SCORE, CanonicalRequest
from translators.errors import OPENAI
from translators.request_body import missing, required_str, wrong_type


def parse_request(endpoint: str, kind: str, body: dict) -> CanonicalRequest:
    req = CanonicalRequest(
        client_dialect=OPENAI, client_endpoint=endpoint, kind=kind, model=required_str(body, "model"),
        stream=False, body=body,
    )
    if kind == RERANK:
        req.inputs = [required_str(body, "query"), *texts(body, "documents")]
    elif kind == SCORE:
        req.inputs = [*texts(body, "text_1"), *texts(body, "text_2")]
    elif isinstance(body.get("messages"), list):
        req.inputs = [str(message.get("content") or "") for message in body["messages"] if isinstance(message, dict)]
    else:
        req.inputs = [required_str(body, "prompt")]
    return req


def texts(body: dict, field: str) -> list[str]:
    """A string or a list of them; a document may also be `{"text": ...}` (vLLM accepts both)."""
    value = body.get(field)
    if value is None:
        raise missing(field)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise wrong_type(field, "a string or a non-empty array of strings", value)
    found = []
    for index, item in enumerate(items):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise wrong_type(f"{field}[{index}]", "a string", item)
        found.append(text)
    return found
