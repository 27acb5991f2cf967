"""A simulated vLLM node: vLLM's OpenAI-compatible server (`vllm serve`).

Objects follow the OpenAI API reference with vLLM's additions (`stop_reason`, `reasoning_content`,
`max_model_len` on models, `ignore_eos`, `chat_template_kwargs`). Streams are SSE, `data: {chunk}\\n\\n`,
ending with `data: [DONE]\\n\\n`; a usage chunk with empty `choices` comes last only when
`stream_options.include_usage` asks for it (vLLM defaults it to true once `stream_options` is given).
Errors are vLLM's `{"error": {"message", "type", "param", "code"}}` with an integer code; what FastAPI
answers itself (a path the server does not route, a method it does not take) is FastAPI's
`{"detail": "Not Found"}`. As in vLLM, the server routes only the APIs its runner serves: generation
(chat, completions) when it serves a generating model, pooling (embeddings, score, rerank) when it
serves an embedding model, `/tokenize` always; `/openapi.json` lists them.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from sim import anthropic, generation
from sim.node import BadRequest, ChunkStream, Node, NodeConfig, Run, json_body, send_json

VERSION = "0.32.0"
SCORE_PATHS = ("/score", "/v1/score")
RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank")
ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "BadRequestError"),
            "param": param,
            "code": status,
        }
    }


@web.middleware
async def fastapi_errors(request: web.Request, handler) -> web.StreamResponse:
    """What FastAPI answers for a path it does not route or a method it does not take."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as error:
        return web.json_response({"detail": error.reason}, status=error.status)


@dataclass(frozen=True)
class ChatPlan:
    model: str
    prompt_tokens: int
    completion: generation.Completion
    finish_reason: str
    think: bool
    tool_call_id: str


class VllmNode:
    middlewares = (fastapi_errors,)

    def __init__(self, config: NodeConfig):
        self.node = Node(config, error_body)
        self.created = int(time.time())
        self._embedding = set(config.embedding_models)
        self._vision = set(config.vision_models)

    def add_routes(self, app: web.Application) -> None:
        inference = self.node.inference
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_post("/tokenize", self._refusing(self.tokenize))
        if set(self.node.config.served_models) - self._embedding:
            app.router.add_post("/v1/chat/completions", inference(self._refusing(self.chat)))
            app.router.add_post("/v1/completions", inference(self._refusing(self.completions)))
            messages = anthropic.MessagesApi(self)
            app.router.add_post("/v1/messages", inference(messages.create))
            app.router.add_post("/v1/messages/count_tokens", inference(messages.count_tokens))
        if self._embedding:
            app.router.add_post("/v1/embeddings", inference(self._refusing(self.embeddings)))
            for path in SCORE_PATHS:
                app.router.add_post(path, inference(self._refusing(self.score)))
            for path in RERANK_PATHS:
                app.router.add_post(path, inference(self._refusing(self.rerank)))
        self.node.add_sim_routes(app, dict)

    async def openapi(self, request: web.Request) -> web.Response:
        """FastAPI's OpenAPI document, reduced to what a reader of vLLM's routes needs: the paths."""
        paths: dict[str, dict] = {}
        for route in request.app.router.routes():
            path = route.resource.canonical if route.resource else ""
            if path.startswith("/_sim/") or route.method == "HEAD":
                continue
            paths.setdefault(path, {})[route.method.lower()] = {}
        return web.json_response({"openapi": "3.1.0", "info": {"title": "FastAPI", "version": "0.1.0"},
                                  "paths": paths})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def models(self, request: web.Request) -> web.Response:
        cards = [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": name,
                "parent": None,
                "max_model_len": generation.CONTEXT_LENGTH,
                "permission": [
                    {
                        "id": f"modelperm-{uuid.uuid4().hex}",
                        "object": "model_permission",
                        "created": self.created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in self.node.config.served_models
        ]
        return web.json_response({"object": "list", "data": cards})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text with the series a scheduler reads from real vLLM, labelled by model_name."""
        node, lines = self.node, []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
            for labels, value in samples:
                rendered = ",".join(f'{k}="{v}"' for k, v in sorted(({"engine": "0"} | labels).items()))
                lines.append(f"{name}{{{rendered}}} {float(value)}")

        models = node.config.served_models
        kv_usage = node.kv_cache_usage()
        family(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            [({"model_name": m}, node.slots.running[m]) for m in models],
        )
        family(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            [({"model_name": m}, node.slots.waiting[m]) for m in models],
        )
        family(
            "vllm:gpu_cache_usage_perc",
            "gauge",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            [({"model_name": m}, kv_usage) for m in models],
        )
        family(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            [({"model_name": m}, kv_usage) for m in models],
        )
        family(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            [({"model_name": m}, node.stats.prompt_tokens[m]) for m in models],
        )
        family(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            [({"model_name": m}, node.stats.completion_tokens[m]) for m in models],
        )
        family(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            [
                ({"model_name": m, "finished_reason": r}, n)
                for (m, r), n in sorted(node.stats.finished.items())
            ],
        )
        return web.Response(
            text="\n".join(lines) + "\n",
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    def _refusing(self, handler):
        async def refusing(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except BadRequest as refused:
                return web.json_response(
                    error_body(refused.status, refused.message, refused.param), status=refused.status
                )

        return refusing

    def plan_chat(self, body: dict) -> ChatPlan:
        """What a chat request will generate, or BadRequest: the Chat Completions and the Messages API share it."""
        model = self._model(body, "Chat Completions")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(400, "messages: Field required (a non-empty list)", "messages")
        self._check_images(model, messages)
        turns = generation.turns_from_openai(messages)
        tools = [t for t in body.get("tools") or [] if t.get("type", "function") == "function"]
        tool, named = self._tool_to_call(body, tools, turns)
        prompt_tokens = generation.count_chat_prompt_tokens(turns, len(tools))
        requested = body.get("max_completion_tokens")
        max_tokens = self._max_tokens(
            prompt_tokens, body.get("max_tokens") if requested is None else requested
        )
        think = bool((body.get("chat_template_kwargs") or {}).get("enable_thinking"))
        completion = self._complete(body, model, generation.prompt_text_of(turns), max_tokens, think, tool)
        finish_reason = completion.finish_reason
        if completion.tool_call and not named:
            finish_reason = "tool_calls"
        return ChatPlan(model, prompt_tokens, completion, finish_reason, think, f"chatcmpl-tool-{uuid.uuid4().hex}")

    def count_chat_tokens(self, body: dict) -> int:
        """The prompt's size as the chat template would make it (the Messages API's count_tokens)."""
        self._model(body, "Chat Completions")
        tools = [t for t in body.get("tools") or [] if t.get("type", "function") == "function"]
        return generation.count_chat_prompt_tokens(generation.turns_from_openai(body.get("messages") or []), len(tools))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        plan = self.plan_chat(body)
        model, prompt_tokens, completion, finish_reason = plan.model, plan.prompt_tokens, plan.completion, plan.finish_reason
        think, tool_call_id = plan.think, plan.tool_call_id
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body["model"]}

        if not body.get("stream"):
            async with self.generating(model, prompt_tokens) as run:
                await run.tokens(completion.completion_tokens)
                run.finish_reason = finish_reason
            message = {
                "role": "assistant",
                "content": None if completion.tool_call else completion.content,
                "tool_calls": (
                    [
                        {
                            "id": tool_call_id,
                            "type": "function",
                            "function": {
                                "name": completion.tool_call.name,
                                "arguments": completion.tool_call.arguments_json,
                            },
                        }
                    ]
                    if completion.tool_call
                    else []
                ),
                "reasoning_content": completion.reasoning if think else None,
            }
            choice = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
            usage = _usage(prompt_tokens, completion.completion_tokens)
            return await send_json(
                request, head | {"object": "chat.completion", "choices": [choice], "usage": usage}
            )

        deltas: list[tuple[dict, int]] = [({"reasoning_content": p}, 1) for p in completion.reasoning_pieces]
        deltas += [({"content": p}, 1) for p in completion.content_pieces]
        if completion.tool_call:
            call = completion.tool_call
            opening = {"index": 0, "id": tool_call_id, "type": "function", "function": {"name": call.name}}
            deltas.append(({"tool_calls": [opening]}, 1))
            deltas += [
                ({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}, 1)
                for p in call.argument_pieces
            ]

        def chunk(choices: list, usage: dict | None = None) -> dict:
            return (
                head
                | {"object": "chat.completion.chunk", "choices": choices}
                | ({"usage": usage} if usage else {})
            )

        def choice(delta: dict, finish: str | None) -> dict:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish} | (
                {"stop_reason": None} if finish else {}
            )

        return await self._stream(
            request,
            body,
            model,
            prompt_tokens,
            deltas,
            finish_reason,
            chunk=chunk,
            choice=choice,
            opening=choice({"role": "assistant", "content": ""}, None),
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        model = self._model(body, "Completions")
        prompt_text, prompt_tokens = _completion_prompt(body.get("prompt"))
        max_tokens = self._max_tokens(prompt_tokens, body.get("max_tokens", 16))
        completion = self._complete(body, model, prompt_text, max_tokens, False, None)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body["model"]}

        if not body.get("stream"):
            async with self.generating(model, prompt_tokens) as run:
                await run.tokens(completion.completion_tokens)
                run.finish_reason = completion.finish_reason
            choice = {
                "index": 0,
                "text": completion.content,
                "logprobs": None,
                "finish_reason": completion.finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            usage = _usage(prompt_tokens, completion.completion_tokens)
            return await send_json(
                request, head | {"object": "text_completion", "choices": [choice], "usage": usage}
            )

        def chunk(choices: list, usage: dict | None = None) -> dict:
            return (
                head | {"object": "text_completion", "choices": choices} | ({"usage": usage} if usage else {})
            )

        def choice(delta: dict, finish: str | None) -> dict:
            return {
                "index": 0,
                "text": delta["content"],
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }

        deltas = [({"content": p}, 1) for p in completion.content_pieces]
        return await self._stream(
            request, body, model, prompt_tokens, deltas, completion.finish_reason, chunk=chunk, choice=choice
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        model = self._model(body, "Embeddings")
        texts = _embedding_inputs(body.get("input"))
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest(
                400, f"encoding_format must be 'float' or 'base64', got {encoding!r}", "encoding_format"
            )
        prompt_tokens = sum(generation.count_text_tokens(t) for t in texts)
        async with self.generating(model, prompt_tokens) as run:
            await run.prefill()
            vectors = [generation.embedding_for(model, t, body.get("dimensions")) for t in texts]
            run.finish_reason = "stop"
        data = [
            {"index": i, "object": "embedding", "embedding": _base64_floats(v) if encoding == "base64" else v}
            for i, v in enumerate(vectors)
        ]
        return await send_json(
            request,
            {
                "id": f"embd-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": body["model"],
                "data": data,
                "usage": _usage(prompt_tokens, 0),
            },
        )

    async def tokenize(self, request: web.Request) -> web.Response:
        """`/tokenize`: a prompt's (or a chat's) token ids and their count, for any served model."""
        body = await self._body(request)
        self._model(body, "Tokenize")
        if isinstance(body.get("messages"), list):
            turns = generation.turns_from_openai(body["messages"])
            tokens = [i for t in turns for i in [0] * generation.MESSAGE_OVERHEAD_TOKENS + generation.token_ids(t.text)]
        elif isinstance(body.get("prompt"), str):
            tokens = generation.token_ids(body["prompt"])
        else:
            raise BadRequest(400, "prompt: Field required (or messages)", "prompt")
        return web.json_response({"count": len(tokens), "max_model_len": generation.CONTEXT_LENGTH,
                                  "tokens": tokens, "token_strs": None})

    async def score(self, request: web.Request) -> web.StreamResponse:
        """`/score`: each `text_2` against `text_1` (one against many, or pairwise), the cosine of embeddings."""
        body = await self._body(request)
        model = self._model(body, "Score")
        firsts, seconds = _texts(body.get("text_1"), "text_1"), _texts(body.get("text_2"), "text_2")
        if len(firsts) == 1:
            firsts = firsts * len(seconds)
        if len(firsts) != len(seconds):
            raise BadRequest(400, "text_1 and text_2 must have the same length, or text_1 one item", "text_1")
        prompt_tokens = sum(generation.count_text_tokens(a) + generation.count_text_tokens(b)
                            for a, b in zip(firsts, seconds))
        async with self.generating(model, prompt_tokens) as run:
            await run.prefill()
            run.finish_reason = "stop"
        data = [{"index": i, "object": "score", "score": generation.similarity(model, a, b)}
                for i, (a, b) in enumerate(zip(firsts, seconds))]
        return await send_json(request, {"id": f"score-{uuid.uuid4().hex}", "object": "list",
                                         "created": int(time.time()), "model": body["model"], "data": data,
                                         "usage": _usage(prompt_tokens, 0)})

    async def rerank(self, request: web.Request) -> web.StreamResponse:
        """`/rerank` (Jina's and Cohere's shape): documents by relevance to the query, best first, `top_n` of them."""
        body = await self._body(request)
        model = self._model(body, "Score")
        query = body.get("query")
        if not isinstance(query, str):
            raise BadRequest(400, "query: Field required (a string)", "query")
        documents = _texts(body.get("documents"), "documents")
        top_n = body.get("top_n") or len(documents)
        prompt_tokens = sum(generation.count_text_tokens(query) + generation.count_text_tokens(d) for d in documents)
        async with self.generating(model, prompt_tokens) as run:
            await run.prefill()
            run.finish_reason = "stop"
        results = sorted(
            ({"index": i, "document": {"text": d}, "relevance_score": generation.similarity(model, query, d)}
             for i, d in enumerate(documents)),
            key=lambda result: -result["relevance_score"])[:top_n]
        return await send_json(request, {"id": f"rerank-{uuid.uuid4().hex}", "model": body["model"],
                                         "usage": {"total_tokens": prompt_tokens}, "results": results})

    async def _stream(
        self, request, body, model, prompt_tokens, deltas, finish_reason, *, chunk, choice, opening=None
    ) -> web.StreamResponse:
        """SSE: the `opening` role chunk (chat), one chunk per token delta (the last carrying the finish
        reason), the usage chunk when asked for, then [DONE]. `chunk` wraps choices in the endpoint's
        object and `choice` shapes one delta."""
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage", True) is not False
        continuous = isinstance(options, dict) and bool(options.get("continuous_usage_stats"))
        out = ChunkStream(request, "text/event-stream; charset=utf-8")
        await out.open()

        async def send(obj: dict, finishing: bool = False) -> None:
            await out.send(b"data: " + json.dumps(obj).encode() + b"\n\n", finishing)

        async with self.generating(model, prompt_tokens) as run:
            if not deltas:
                deltas = [({"content": ""}, 0)]
            for index, (delta, tokens) in enumerate(deltas):
                await run.tokens(tokens)
                usage = _usage(prompt_tokens, run.generated) if continuous else None
                if index == 0 and opening is not None:
                    await send(chunk([opening], _usage(prompt_tokens, 0) if continuous else None))
                last = index == len(deltas) - 1
                await send(chunk([choice(delta, finish_reason if last else None)], usage), finishing=last)
            run.finish_reason = finish_reason
            if include_usage:
                await send(chunk([], _usage(prompt_tokens, run.generated)))
            await out.send(b"data: [DONE]\n\n")
        return await out.close()

    @asynccontextmanager
    async def generating(self, model: str, prompt_tokens: int) -> AsyncIterator[Run]:
        """A slot, then a running generation (vLLM keeps its model loaded: nothing to wait for)."""
        async with self.node.slot(model), self.node.running(model, prompt_tokens) as run:
            yield run

    async def _body(self, request: web.Request) -> dict:
        body = await json_body(request)
        if body is None:
            raise BadRequest(400, "the request body must be a JSON object")
        if body.get("stream_options") is not None and not body.get("stream"):
            raise BadRequest(400, "Stream options can only be defined when `stream=True`.", "stream_options")
        if body.get("n") not in (None, 1):
            raise BadRequest(400, "this simulated vLLM node serves n=1 only", "n")
        return body

    def _model(self, body: dict, api: str) -> str:
        """The served model the body names (the first one when it names none, as vLLM does)."""
        served = self.node.config.served_models
        model = body.setdefault("model", served[0])
        if model not in served:
            raise BadRequest(404, f"The model `{model}` does not exist.", "model")
        if api in ("Chat Completions", "Completions") and model in self._embedding:
            raise BadRequest(400, f"The model does not support {api} API")
        if api in ("Embeddings", "Score") and model not in self._embedding:
            raise BadRequest(400, f"The model does not support {api} API")
        return model

    def _check_images(self, model: str, messages: list) -> None:
        for message in messages:
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                if part.get("type") != "image_url":
                    continue
                if model not in self._vision:
                    raise BadRequest(400, f"The model `{model}` does not support image input", "messages")
                url = (part.get("image_url") or {}).get("url", "")
                if url.startswith("data:"):
                    try:
                        base64.b64decode(url.split(",", 1)[1], validate=True)
                    except (IndexError, ValueError) as error:
                        raise BadRequest(400, f"invalid image data URL: {error}", "messages") from None

    @staticmethod
    def _tool_to_call(body: dict, tools: list, turns: list) -> tuple[dict | None, bool]:
        """The function to call (and whether it was named): the first tool, when the user spoke last."""
        choice = body.get("tool_choice")
        if not tools or choice == "none":
            return None, False
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            named = next((t["function"] for t in tools if t["function"].get("name") == name), None)
            if named is None:
                raise BadRequest(400, f"tool_choice names an unknown function {name!r}", "tool_choice")
            return named, True
        if choice == "required" or turns[-1].role == "user":
            return tools[0]["function"], False
        return None, False

    @staticmethod
    def _max_tokens(prompt_tokens: int, requested) -> int:
        """The generation cap, refused the way vLLM refuses a request that cannot fit the context."""
        context = generation.CONTEXT_LENGTH
        if prompt_tokens >= context:
            raise BadRequest(
                400,
                f"This model's maximum context length is {context} tokens. However, your request "
                f"has {prompt_tokens} input tokens. Please reduce the length of the input messages.",
                "input_tokens",
            )
        if requested is None:
            return context - prompt_tokens
        if not isinstance(requested, int) or requested < 1:
            raise BadRequest(400, f"max_tokens must be at least 1, got {requested}.", "max_tokens")
        if prompt_tokens + requested > context:
            raise BadRequest(
                400,
                f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This model's "
                f"maximum context length is {context} tokens and your request has {prompt_tokens} "
                f"input tokens ({requested} > {context} - {prompt_tokens}).",
                "max_tokens",
            )
        return requested

    @staticmethod
    def _complete(body, model, prompt_text, max_tokens, think, tool) -> generation.Completion:
        stop = body.get("stop") or []
        response_format = body.get("response_format") or {}
        kind = response_format.get("type", "text")
        if kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise BadRequest(
                    400, "response_format.json_schema.schema must be a JSON schema", "response_format"
                )
            output_format = schema
        elif kind == "json_object":
            output_format = "json"
        elif kind == "text":
            output_format = None
        else:
            raise BadRequest(400, f"unknown response_format type {kind!r}", "response_format")
        return generation.complete(
            model,
            prompt_text,
            max_tokens=max_tokens,
            stop=[stop] if isinstance(stop, str) else stop,
            output_format=output_format,
            think=think,
            tool=tool,
            ignore_eos=bool(body.get("ignore_eos")),
        )


def _completion_prompt(prompt) -> tuple[str, int]:
    """A completion prompt's text and token count: text, one text in a list, or token ids."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, generation.count_text_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return " ".join(map(str, prompt)), len(prompt)
    raise BadRequest(
        400,
        "prompt must be a string, token ids, or a list holding one of them "
        "(this simulated node serves one prompt per request)",
        "prompt",
    )


def _embedding_inputs(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return [" ".join(map(str, ids)) for ids in value]
    raise BadRequest(400, "input must be a string, a list of strings, or token ids", "input")


def _texts(value, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise BadRequest(400, f"{param} must be a string or a non-empty list of strings", param)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
