"""A fake LLM provider on loopback: OpenAI-compatible chat completions and Anthropic Messages.

Used by the test suite, the benchmarks and the zero-setup demo (when no real LLM is configured).
It is a raw ASGI app (no framework) served by uvicorn in one asyncio process:

    python -m explainers.fakellm --host 127.0.0.1 --port 0 --port-file PATH

writes the bound port to PATH once it is listening.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (stream and non-stream, tools,
``response_format`` json_schema), ``POST /v1/messages`` (Anthropic events, tool_use blocks), and
the control API under ``/_control/``:

- ``POST /_control/behaviour``: the default behaviour for every request from now on, e.g.
  ``{"ttft_s": 0, "chunk_delay_s": 0, "latency_s": 0, "reply": null, "tool_calls": null,
  "json": null, "failure_rate": 0.0, "failures": ["429","500","529","hang","drop"],
  "retry_after_s": 1, "seed": 1, "usage": true, "model": null, "ignore_tools": false}``;
  ``"pause_s"`` adds one silence of that length in the middle of a streamed reply.
- Endpoint shapes for `explainers.probe`: ``"ignore_json_object": true`` answers prose to a
  ``json_object`` request (a server that does not enforce it); ``"context_window": N`` answers the
  context-length 400 to a prompt of more than N (estimated) tokens, and with ``"report_context": true``
  lists N as each model's ``max_model_len`` in ``GET /v1/models`` (as vLLM does).
- ``POST /_control/queue``: a list of one-shot behaviours consumed in order by the next requests,
  e.g. ``[{"fail": "429", "retry_after_s": 2}, {"fail": "hang"}, {"reply": "exact text"}]``.
- ``POST /_control/match``: ``{"contains": "...", "behaviour": {...}, "times": N}``: a behaviour
  for requests whose last user message contains the text (``times``: null = forever).
- ``GET /_control/requests``, ``GET /_control/stats``, ``POST /_control/reset``,
  ``GET /_control/behaviour``.

The scripted explainer: a request whose system prompt carries the agentic arm's tagged sections is
answered by ``explainers/scripted.py`` (the demo's explainer, which says so in every text), unless the
behaviour scripts ``reply``, ``json`` or ``tool_calls`` (or sets ``"explainer": false``). Other requests
(the chat arm, the tests) get the behaviour described above.

Failures (``"fail"`` in a one-shot, or drawn from ``failures`` with ``failure_rate``):
``"429"`` (with Retry-After), ``"500"``, ``"503"``, ``"529"`` (overloaded, on both endpoints),
``"401"``, ``"403"``, ``"400"``, ``"quota"`` (spend cap), ``"context"`` (context length exceeded),
``"hang"`` (never answer), ``"drop"`` (stream part, then cut the connection), ``"truncate"``
(stream part, then end the body cleanly without a finish / [DONE] / message_stop), ``"no_done"``
(the whole reply and its finish, but no ``[DONE]`` / message_stop),
``"trickle"`` (send keep-alive comments forever, never a token), ``"stream_error"`` (an error
event in the middle of the stream), ``"stall"`` (stream part, then fall silent with the connection
open until the client goes away).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path

DEFAULT_BEHAVIOUR: dict = {
    "ttft_s": 0.0,
    "chunk_delay_s": 0.0,
    "latency_s": 0.0,
    "reply": None,
    "tool_calls": None,
    "json": None,
    "failure_rate": 0.0,
    "failures": ["429", "500", "529", "hang", "drop"],
    "retry_after_s": 1,
    "seed": 1,
    "usage": True,
    "model": None,
    "ignore_tools": False,
}
MAX_RECORDS = 50_000
MODELS = ["fake-model", "fake-small", "fake-claude"]


# --------------------------------------------------------------------------- helpers

# The request readers and the schema filler are shared with the demo's scripted explainer (its own module).
from explainers.scripted import explainer_script, last_user_text, schema_instance, text_of  # noqa: E402,F401



def estimate_tokens(body: dict) -> int:
    chars = len(text_of(body.get("system"))) if "system" in body else 0
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            chars += len(text_of(message.get("content"))) + 4
    return max(1, chars // 4)


HAN = re.compile(r"[\u4e00-\u9fff]")


def default_reply(messages, system=None) -> str:
    """The reply to a plain chat request: it says it is scripted and quotes the question, in Simplified
    Chinese when the system prompt (the arm's instructions in the page's language) or the question is
    written in it, in English otherwise."""
    asked = " ".join(last_user_text(messages).split())
    if len(asked) > 160:
        asked = asked[:157].rstrip() + "…"
    cue = " ".join([text_of(system), *(text_of(m.get("content")) for m in messages or []
                                       if isinstance(m, dict) and m.get("role") == "system")])
    if HAN.search(cue) or HAN.search(asked):
        return (
            "（脚本化的演示回复——没有配置真实的语言模型。）"
            f"你问：“{asked or '（还没有问题）'}”。"
            "真实的解释模型会根据研究材料和之前的对话来回答。"
            "这条回复逐词流式显示，以便从头到尾试用聊天。"
        )
    return (
        "(Scripted demo reply — no real language model is configured.) "
        f"You asked: “{asked or '(nothing yet)'}”. "
        "A real explainer model would answer this from the study material and the conversation so far. "
        "This reply is streamed word by word so that the chat can be tried end to end."
    )


def pieces(text: str) -> list[str]:
    """Split text into word-sized stream chunks that join back to the exact text."""
    parts = re.findall(r"\s*\S+\s*", text)
    return parts or ([text] if text else [])


def split_args(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _Disconnect:
    """Watches an ASGI receive channel for the client going away."""

    def __init__(self, receive):
        self.event = asyncio.Event()
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive):
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
        except Exception:
            pass
        self.event.set()

    @property
    def gone(self) -> bool:
        return self.event.is_set()

    def cancel(self):
        self._task.cancel()


# --------------------------------------------------------------------------- the app


class FakeLLMApp:
    def __init__(self):
        self.reset()

    def reset(self):
        self.behaviour = dict(DEFAULT_BEHAVIOUR)
        self.rng = random.Random(self.behaviour["seed"])
        self.queue: deque = deque()
        self.matches: list[dict] = []
        self.records: deque = deque(maxlen=MAX_RECORDS)
        self.in_flight = 0
        self.max_in_flight = 0
        self.total = 0
        self.by_status: dict[str, int] = {}
        self.started = time.time()
        self.generation = getattr(self, "generation", 0) + 1

    # -- ASGI entry
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            await self._json(send, 400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        if path.startswith("/_control/"):
            await self._control(path[len("/_control/") :], method, body, send)
            return
        if method == "GET" and path in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fakellm"} for m in MODELS]
            if self.behaviour.get("report_context") and self.behaviour.get("context_window"):
                data = [{**entry, "max_model_len": int(self.behaviour["context_window"])} for entry in data]
            await self._json(send, 200, {"object": "list", "data": data})
            return
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            await self._model_call("openai", scope, body or {}, receive, send)
            return
        if method == "POST" and path in ("/v1/messages", "/messages"):
            await self._model_call("anthropic", scope, body or {}, receive, send)
            return
        if method == "GET" and path in ("/", "/health", "/healthz"):
            await self._json(send, 200, {"ok": True, "fakellm": True})
            return
        await self._json(send, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})

    # -- plain responses
    @staticmethod
    async def _json(send, status, obj, headers=()):
        data = json.dumps(obj).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    # -- control API
    async def _control(self, name, method, body, send):
        if name == "behaviour" and method == "POST":
            merged = dict(DEFAULT_BEHAVIOUR)
            merged.update(body or {})
            self.behaviour = merged
            self.rng = random.Random(merged.get("seed"))
            await self._json(send, 200, {"behaviour": self.behaviour})
        elif name == "behaviour":
            await self._json(send, 200, {"behaviour": self.behaviour})
        elif name == "queue" and method == "POST":
            items = body if isinstance(body, list) else [body]
            self.queue.extend(dict(b or {}) for b in items)
            await self._json(send, 200, {"queued": len(self.queue)})
        elif name == "match" and method == "POST":
            body = body or {}
            self.matches.append(
                {"contains": str(body.get("contains", "")), "behaviour": dict(body.get("behaviour") or {}), "times": body.get("times", 1)}
            )
            await self._json(send, 200, {"matches": len(self.matches)})
        elif name == "requests":
            await self._json(send, 200, {"requests": list(self.records)})
        elif name == "stats":
            await self._json(send, 200, self._stats())
        elif name == "reset" and method == "POST":
            in_flight = self.in_flight
            self.reset()
            self.in_flight = in_flight
            await self._json(send, 200, {"reset": True})
        else:
            await self._json(send, 404, {"error": {"message": f"no control {method} {name}"}})

    def _stats(self):
        return {
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "total": self.total,
            "by_status": dict(self.by_status),
            "queued": len(self.queue),
            "matches": len(self.matches),
            "uptime_s": round(time.time() - self.started, 3),
        }

    # -- choosing a behaviour
    def _choose(self, body) -> tuple[dict, str]:
        specific, source = None, "default"
        text = last_user_text(body.get("messages"))
        for match in self.matches:
            if match["contains"] in text and (match["times"] is None or match["times"] > 0):
                if match["times"] is not None:
                    match["times"] -= 1
                specific, source = match["behaviour"], "match"
                break
        self.matches = [m for m in self.matches if m["times"] is None or m["times"] > 0]
        if specific is None and self.queue:
            specific, source = self.queue.popleft(), "queue"
        behaviour = dict(self.behaviour)
        if specific:
            behaviour.update(specific)
        if not behaviour.get("fail") and behaviour.get("failure_rate"):
            if self.rng.random() < float(behaviour["failure_rate"]):
                behaviour["fail"] = self.rng.choice(behaviour.get("failures") or ["500"])
        return behaviour, source

    # -- one model call
    async def _model_call(self, api, scope, body, receive, send):
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.lower() not in (b"authorization", b"x-api-key", b"api-key")
        }
        behaviour, source = self._choose(body)
        record = {
            "path": scope["path"],
            "api": api,
            "body": body,
            "headers": headers,
            "has_key": any(k.lower() in (b"authorization", b"x-api-key", b"api-key") for k, _ in scope["headers"]),
            "received_at": time.time(),
            "behaviour": behaviour,
            "behaviour_source": source,
            "status": None,
            "outcome": None,
        }
        self.records.append(record)
        generation = self.generation
        self.total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        watcher = _Disconnect(receive)
        call = _Call(self, api, body, behaviour, send, watcher, record)
        try:
            await call.run()
        finally:
            watcher.cancel()
            self.in_flight -= 1
            if generation == self.generation:  # not a request from before the last reset
                key = str(record["status"]) if record["status"] is not None else str(record["outcome"])
                self.by_status[key] = self.by_status.get(key, 0) + 1
            record["finished_at"] = time.time()


class _Call:
    def __init__(self, app, api, body, behaviour, send, watcher, record):
        self.app, self.api, self.body, self.b = app, api, body, behaviour
        self.send, self.watcher, self.record = send, watcher, record
        self.stream = bool(body.get("stream"))
        self.model = behaviour.get("model") or body.get("model") or "fake-model"
        self.id = ("chatcmpl-" if api == "openai" else "msg_") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    # ---------------------------------------------------------------- plan
    def _plan(self):
        """Return (text, tool_calls[{id,name,arguments}]) for this request."""
        b, body = self.b, self.body
        scripted = b.get("reply") is None and b.get("json") is None and not b.get("tool_calls")
        script = explainer_script(self.api, body) if scripted and b.get("explainer", True) else None
        if script:
            b = {**b, **script}
        tools = body.get("tools") or []
        names = []
        for tool in tools:
            if self.api == "openai":
                names.append(((tool.get("function") or {}).get("name"), (tool.get("function") or {}).get("parameters")))
            else:
                names.append((tool.get("name"), tool.get("input_schema")))
        forced = None
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            forced = (choice.get("function") or {}).get("name") if self.api == "openai" else choice.get("name")
        elif choice in ("required", "any") and names:
            forced = names[0][0]
        calls = []
        none = choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none")
        if tools and not b.get("ignore_tools") and not none:
            for i, call in enumerate(b.get("tool_calls") or []):
                calls.append(
                    {
                        "id": call.get("id") or (("call_" if self.api == "openai" else "toolu_") + uuid.uuid4().hex[:20]),
                        "name": call.get("name") or (names[0][0] if names else "tool"),
                        "arguments": call.get("arguments") if call.get("arguments") is not None else call.get("input", {}),
                    }
                )
            if forced and not calls:
                schema = dict(names).get(forced) or {}
                args = b["json"] if b.get("json") is not None else schema_instance(schema)
                calls.append({"id": ("call_" if self.api == "openai" else "toolu_") + uuid.uuid4().hex[:20], "name": forced, "arguments": args})
        text = b.get("reply")
        fmt = body.get("response_format") if self.api == "openai" else None
        if text is None:
            if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
                schema = (fmt.get("json_schema") or {}).get("schema") or {}
                text = json.dumps(b["json"] if b.get("json") is not None else schema_instance(schema))
            elif isinstance(fmt, dict) and fmt.get("type") == "json_object" and not b.get("ignore_json_object"):
                text = json.dumps(b["json"] if b.get("json") is not None else {})
            elif forced and tools and b.get("ignore_tools"):
                # a local server that ignored the forced tool and wrote the JSON in the text
                schema = dict(names).get(forced) or {}
                text = json.dumps(b["json"] if b.get("json") is not None else schema_instance(schema))
            elif b.get("json") is not None and not calls:
                text = json.dumps(b["json"])
            elif calls:
                text = ""
            else:
                text = default_reply(body.get("messages"), body.get("system"))
        return text, calls

    # ---------------------------------------------------------------- run
    async def run(self):
        fail = self.b.get("fail")
        if fail is not None:
            fail = str(fail)
        if fail == "hang":
            self.record["outcome"] = "hang"
            await self.watcher.event.wait()
            return
        if fail and fail not in ("drop", "truncate", "trickle", "stream_error", "no_done", "stall"):
            await self._error(fail)
            return
        window = self.b.get("context_window")
        if window and estimate_tokens(self.body) > int(window):
            await self._error("context")
            return
        text, calls = self._plan()
        self.record["outcome"] = fail or "ok"
        if not self.stream:
            if fail in ("drop", "trickle", "stream_error", "truncate", "no_done", "stall"):
                # nothing sensible to cut in a non-streamed body: answer 500 for these
                await self._error("500")
                return
            await self._sleep(float(self.b.get("latency_s") or 0) or float(self.b.get("ttft_s") or 0))
            await self._whole(text, calls)
            return
        await self._stream(text, calls, fail)

    async def _sleep(self, seconds):
        if seconds > 0 and not self.watcher.gone:
            await asyncio.sleep(seconds)

    def _usage(self, out_tokens):
        inp = estimate_tokens(self.body)
        if self.api == "openai":
            return {"prompt_tokens": inp, "completion_tokens": out_tokens, "total_tokens": inp + out_tokens}
        return {"input_tokens": inp, "output_tokens": out_tokens}

    def _finish(self, calls):
        if self.b.get("finish_reason"):
            return self.b["finish_reason"]
        if self.api == "openai":
            return "tool_calls" if calls else "stop"
        return "tool_use" if calls else "end_turn"

    # ---------------------------------------------------------------- errors
    async def _error(self, fail):
        openai = self.api == "openai"
        headers = []
        status, etype, message, code = 500, "api_error", "The fake server had an error while processing your request.", None
        if fail == "429":
            status, etype, code = 429, ("rate_limit_exceeded" if openai else "rate_limit_error"), "rate_limit_exceeded"
            message = "Rate limit reached for requests (fake). Please try again later."
            retry = self.b.get("retry_after_s")
            if retry is not None:
                headers.append((b"retry-after", str(retry).encode()))
        elif fail == "quota":
            if openai:
                status, etype, code = 429, "insufficient_quota", "insufficient_quota"
                message = "You exceeded your current quota, please check your plan and billing details."
            else:
                status, etype = 400, "invalid_request_error"
                message = "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."
        elif fail == "context":
            status, etype = 400, "invalid_request_error"
            if openai:
                code = "context_length_exceeded"
                message = (
                    f"This model's maximum context length is 4096 tokens. However, your messages resulted in "
                    f"{estimate_tokens(self.body) + 4096} tokens. Please reduce the length of the messages."
                )
            else:
                message = f"prompt is too long: {estimate_tokens(self.body) + 200000} tokens > 200000 maximum"
        elif fail == "401":
            status, etype, code = 401, ("invalid_request_error" if openai else "authentication_error"), "invalid_api_key"
            message = "Incorrect API key provided." if openai else "invalid x-api-key"
        elif fail == "403":
            status, etype, message = 403, "permission_error", "Your API key does not have permission to use the specified resource."
        elif fail == "400":
            status, etype, message = 400, "invalid_request_error", "Invalid request (fake)."
        elif fail == "529":
            status, etype, message = 529, "overloaded_error", "Overloaded"
        elif fail.isdigit():
            status = int(fail)
            etype = "api_error" if status >= 500 else "invalid_request_error"
            message = f"Fake error {status}."
        if openai:
            payload = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        else:
            payload = {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_fake"}
        self.record["status"] = status
        self.record["outcome"] = f"error:{fail}"
        await FakeLLMApp._json(self.send, status, payload, headers)

    # ---------------------------------------------------------------- non-streamed
    async def _whole(self, text, calls):
        out_tokens = max(1, len(pieces(text)) + sum(len(json.dumps(c["arguments"])) // 4 for c in calls))
        if self.api == "openai":
            message = {"role": "assistant", "content": text if (text or not calls) else None, "refusal": None}
            if calls:
                message["tool_calls"] = [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                    for c in calls
                ]
            payload = {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "fp_fakellm",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self._finish(calls)}],
            }
            if self.b.get("usage", True):
                payload["usage"] = self._usage(out_tokens)
        else:
            content = [{"type": "text", "text": text}] if text else []
            content += [{"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["arguments"]} for c in calls]
            payload = {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": content,
                "stop_reason": self._finish(calls),
                "stop_sequence": None,
                "usage": self._usage(out_tokens) if self.b.get("usage", True) else {"input_tokens": 0, "output_tokens": 0},
            }
        self.record["status"] = 200
        await FakeLLMApp._json(self.send, 200, payload)

    # ---------------------------------------------------------------- streamed
    async def _stream(self, text, calls, fail):
        events = self._events(text, calls)  # list of (is_content, bytes)
        if fail == "no_done":
            events = events[:-1]  # everything but the final `data: [DONE]` / message_stop
        self.record["status"] = 200
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        content_count = max(1, sum(1 for is_content, _ in events if is_content))
        ttft = float(self.b.get("ttft_s") or 0)
        latency = float(self.b.get("latency_s") or 0)
        per_chunk = float(self.b.get("chunk_delay_s") or 0)
        spread = max(0.0, latency - ttft) / content_count if latency else 0.0
        cut = None
        if fail in ("drop", "truncate", "stream_error", "stall"):
            content_idx = [i for i, (is_content, _) in enumerate(events) if is_content]
            cut = content_idx[len(content_idx) // 2] if content_idx else 1
        # pause_s: one silence of that length in the middle of the content (a model that stops to think)
        pause = float(self.b.get("pause_s") or 0)
        content_at = [i for i, (is_content, _) in enumerate(events) if is_content]
        pause_at = content_at[len(content_at) // 2] if pause and content_at else None
        first = True
        for index, (is_content, data) in enumerate(events):
            if self.watcher.gone:
                self.record["outcome"] = "client_disconnected"
                return
            if cut is not None and index >= cut:
                break
            if fail == "trickle" and is_content:
                break
            if is_content:
                await self._sleep((ttft if first else 0) + per_chunk + (pause if index == pause_at else 0))
                first = False
            await self.send({"type": "http.response.body", "body": data, "more_body": True})
            if is_content:
                await self._sleep(spread)  # latency_s - ttft_s spread over the content chunks
        if fail == "trickle":
            interval = float(self.b.get("chunk_delay_s") or 0) or 0.2
            comment = b": keep-alive\n\n" if self.api == "openai" else b'event: ping\ndata: {"type": "ping"}\n\n'
            while not self.watcher.gone:
                await self.send({"type": "http.response.body", "body": comment, "more_body": True})
                await self._sleep(interval)
            self.record["outcome"] = "trickle"
            return
        if fail == "stall":
            self.record["outcome"] = "stall"
            await self.watcher.event.wait()  # silent, the connection open, until the client gives up
            return
        if fail == "drop":
            return  # uvicorn closes the connection: the chunked body never completes
        if fail == "stream_error":
            if self.api == "openai":
                err = {"error": {"message": "The server had an error while streaming (fake).", "type": "server_error", "code": None}}
                data = b"data: " + json.dumps(err).encode() + b"\n\n"
            else:
                err = {"type": "error", "error": {"type": self.b.get("error_type") or "overloaded_error", "message": "Overloaded"}}
                data = b"event: error\ndata: " + json.dumps(err).encode() + b"\n\n"
            await self.send({"type": "http.response.body", "body": data, "more_body": True})
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def _events(self, text, calls) -> list[tuple[bool, bytes]]:
        words = pieces(text)
        out_tokens = max(1, len(words) + sum(len(json.dumps(c["arguments"])) // 4 for c in calls))
        events: list[tuple[bool, bytes]] = []
        usage_on = bool(self.b.get("usage", True))
        if self.api == "openai":
            include_usage = usage_on and bool((self.body.get("stream_options") or {}).get("include_usage"))

            def chunk(delta, finish=None, choices=True, usage=None):
                payload = {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": "fp_fakellm",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
                }
                if include_usage:
                    payload["usage"] = usage
                return b"data: " + json.dumps(payload).encode() + b"\n\n"

            events.append((False, chunk({"role": "assistant", "content": "", "refusal": None})))
            for word in words:
                events.append((True, chunk({"content": word})))
            for i, call in enumerate(calls):
                start = {"index": i, "id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": ""}}
                events.append((True, chunk({"tool_calls": [start]})))
                for piece in split_args(json.dumps(call["arguments"])):
                    events.append((True, chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})))
            events.append((False, chunk({}, finish=self._finish(calls))))
            if include_usage:
                events.append((False, chunk(None, choices=False, usage=self._usage(out_tokens))))
            events.append((False, b"data: [DONE]\n\n"))
            return events

        def event(name, payload):
            return b"event: " + name.encode() + b"\ndata: " + json.dumps(payload).encode() + b"\n\n"

        usage = self._usage(out_tokens) if usage_on else {"input_tokens": 0, "output_tokens": 0}
        start_usage = {"input_tokens": usage["input_tokens"], "output_tokens": 1 if usage_on else 0}
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        events.append((False, event("message_start", {"type": "message_start", "message": message})))
        index = 0
        if words:
            events.append((False, event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})))
            events.append((False, event("ping", {"type": "ping"})))
            for word in words:
                delta = {"type": "text_delta", "text": word}
                events.append((True, event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})))
            events.append((False, event("content_block_stop", {"type": "content_block_stop", "index": 0})))
            index = 1
        for call in calls:
            block = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
            events.append((True, event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})))
            for piece in split_args(json.dumps(call["arguments"])):
                delta = {"type": "input_json_delta", "partial_json": piece}
                events.append((True, event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})))
            events.append((False, event("content_block_stop", {"type": "content_block_stop", "index": index})))
            index += 1
        delta_usage = {"output_tokens": usage["output_tokens"]}
        events.append(
            (
                False,
                event(
                    "message_delta",
                    {"type": "message_delta", "delta": {"stop_reason": self._finish(calls), "stop_sequence": None}, "usage": delta_usage},
                ),
            )
        )
        events.append((False, event("message_stop", {"type": "message_stop"})))
        return events


app = FakeLLMApp()


# --------------------------------------------------------------------------- process entry


class _QuietIncomplete(logging.Filter):
    def filter(self, record):
        return "returned without completing response" not in record.getMessage()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m explainers.fakellm", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", default=None, help="write the bound port here once listening")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--behaviour", default=None, help="initial default behaviour as JSON")
    args = parser.parse_args(argv)

    import uvicorn

    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    except Exception:
        pass
    if args.behaviour:
        app.behaviour.update(json.loads(args.behaviour))
        app.rng = random.Random(app.behaviour.get("seed"))

    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if args.port_file and not self.should_exit:
                tmp = f"{args.port_file}.tmp{os.getpid()}"
                Path(tmp).write_text(str(port))
                os.replace(tmp, args.port_file)

    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,
    )
    logging.getLogger("uvicorn.error").addFilter(_QuietIncomplete())
    Server(config).run(sockets=[sock])


# --------------------------------------------------------------------------- driving it from tests


class FakeLLM:
    """Start the fake server as a subprocess and drive it.

    with FakeLLM() as fake:
        fake.control("behaviour", {"latency_s": 1})
        ... LLMRequest(provider="openai", base_url=fake.openai_base_url, ...)
    """

    def __init__(self, port_file_dir=None, host: str = "127.0.0.1", behaviour: dict | None = None, log_level: str = "warning"):
        self.host = host
        self.port_file_dir = port_file_dir
        self.behaviour = behaviour
        self.log_level = log_level
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._http = None
        self._tmp = None

    # -- lifecycle
    def start(self, timeout: float = 20.0) -> "FakeLLM":
        import httpx2

        folder = self.port_file_dir
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fakellm-")
            folder = self._tmp.name
        port_file = Path(folder) / f"fakellm-{os.getpid()}-{uuid.uuid4().hex[:8]}.port"
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        command = [sys.executable, "-m", "explainers.fakellm", "--host", self.host, "--port", "0", "--port-file", str(port_file), "--log-level", self.log_level]
        if self.behaviour:
            command += ["--behaviour", json.dumps(self.behaviour)]
        self.process = subprocess.Popen(command, cwd=root, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fakellm exited with code {self.process.returncode}")
            if port_file.exists():
                text = port_file.read_text().strip()
                if text:
                    self.port = int(text)
                    break
            time.sleep(0.02)
        else:
            self.stop()
            raise RuntimeError("fakellm did not start in time")
        self._http = httpx2.Client(base_url=self.url, timeout=10.0, trust_env=False)
        port_file.unlink(missing_ok=True)
        return self

    def stop(self):
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "FakeLLM":
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.stop()

    # -- addresses
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url  # the Anthropic SDK appends /v1/messages itself

    # -- control
    def control(self, name: str, body=None):
        """POST body to /_control/NAME (GET when body is None and NAME is a read), return the JSON."""
        if body is None and name in ("requests", "stats", "behaviour"):
            response = self._http.get(f"/_control/{name}")
        else:
            response = self._http.post(f"/_control/{name}", json=body if body is not None else {})
        response.raise_for_status()
        return response.json()

    def set_behaviour(self, **behaviour):
        return self.control("behaviour", behaviour)

    def queue(self, *behaviours):
        return self.control("queue", list(behaviours))

    def match(self, contains: str, behaviour: dict, times: int | None = 1):
        return self.control("match", {"contains": contains, "behaviour": behaviour, "times": times})

    def requests(self) -> list[dict]:
        return self.control("requests")["requests"]

    def stats(self) -> dict:
        return self.control("stats")

    def reset(self):
        return self.control("reset", {})


def fakellm_start(port_file_dir=None, **kwargs) -> tuple[subprocess.Popen, str]:
    """Start the fake server; return (process, base_url). Stop it with fakellm_stop(process)."""
    fake = FakeLLM(port_file_dir, **kwargs).start()
    if fake._http is not None:
        fake._http.close()
        fake._http = None
    return fake.process, fake.url


def fakellm_stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


stop = fakellm_stop

if __name__ == "__main__":
    main()
