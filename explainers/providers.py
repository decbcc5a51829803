"""The LLM layer: one streamed attempt at one LLM call, through the official SDKs.

`llm_call(request, on_delta)` makes exactly one attempt (the SDKs' own retries are off) so that
the caller can log every attempt as its own row and retry with backoff. It is synchronous and
thread-safe: it runs in Celery worker threads with many calls in flight per process, sharing one
SDK client (and its connection pool) per (provider, base_url, key).

Providers: ``"openai"`` is any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, the
fake in ``explainers.fakellm``) through ``openai.OpenAI``; ``"anthropic"`` is the Messages API
through ``anthropic.Anthropic``. Keys come only from the environment (``LLM_API_KEY``,
``ANTHROPIC_API_KEY``); base URLs from the request or ``LLM_BASE_URL`` / ``ANTHROPIC_BASE_URL``,
read at call time.

Requests are built, authenticated and sent by the SDKs (``with_streaming_response.create(stream=True)``),
which also map error statuses to exceptions; the server-sent events are parsed here from the raw
body, which checks the limits on every network chunk and is ~10x cheaper than the SDKs' typed
chunk objects.

Three limits bound an attempt (``LLMRequest.ttft_s``, ``idle_s``, ``timeout_s``): the first token, the
silence between two chunks once the first token came, and the total. A read timeout is not a
deadline (it restarts on every byte) and a check on each chunk never runs while the socket is silent,
so one watchdog thread per process looks at every call in flight every ``WATCHDOG_TICK_S`` and shuts
the socket of a call that passed a limit; its blocked read returns at once. Before the response
headers there is no socket to shut: that phase is bounded by the read timeout, min(ttft, total).

Note: the SDK versions installed here (openai 3.x, anthropic 2.x) are built on ``httpx2``, the one HTTP
client of the project (the fake LLM server, the probe and the bots use it too), not
``httpx``; their ``http_client`` must be an ``httpx2.Client`` (anthropic refuses an
``httpx.Client`` outright).
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from email.utils import parsedate_to_datetime

import anthropic
import httpx2
import openai

PROVIDERS = ("openai", "anthropic")
ANTHROPIC_DEFAULT_MAX_TOKENS = 1024
NO_KEY = "not-needed"
# A kept-alive connection is dropped after 4 s idle: local servers (llama.cpp's closes them after 5 s) would
# otherwise close it under us and the next call fail at once with "Server disconnected".
POOL_LIMITS = dict(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=4.0)

# How `LLMRequest.response_schema` is asked for: the server enforces the schema (json_schema), or only
# JSON (json_object), or nothing (instructions). The reply is parsed from the text in every case.
STRUCTURED_MODES = ("json_schema", "json_object", "instructions")
# The schema as an instruction, appended to the first system message, where the server does not enforce it.
SCHEMA_INSTRUCTION = (
    "Answer with one JSON object and nothing else: no prose, no code fence. "
    "It must validate against this JSON Schema (named {name}):\n{schema}"
)
LIMITS = ("ttft", "idle", "total")  # ProviderError.limit of a timeout
WATCHDOG_TICK_S = 0.1  # how often the watchdog looks at the calls in flight: a limit is cut within ~0.1 s
# After the response headers the watchdog bounds the body; the read timeout is only a backstop behind it.
BACKSTOP_S = 2.0

RETRYABLE_KINDS = frozenset({"timeout", "rate_limit", "server", "overloaded", "dropped", "connection"})
FINAL_KINDS = frozenset({"bad_request", "context_overflow", "spend_cap", "auth"})

_CONTEXT_WORDS = (
    "context_length_exceeded",
    "maximum context length",
    "prompt is too long",
    "exceeds the context window",
    "context window",
    "context length",
    "exceed_context_size",
    "exceeds the available context size",
    "context size",
)
_SPEND_WORDS = (
    "insufficient_quota",
    "exceeded your current quota",
    "credit balance",
    "billing",
    "spend limit",
    "spending limit",
    "api usage limits",
)

# Parameters that OpenAI-compatible servers understand but the Anthropic API refuses.
_OPENAI_ONLY_PARAMS = frozenset(
    {"frequency_penalty", "presence_penalty", "seed", "n", "logit_bias", "logprobs", "top_logprobs",
     "response_format", "user", "parallel_tool_calls", "max_completion_tokens", "stream_options"}
)


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class LLMRequest:
    provider: str  # "openai" (any OpenAI-compatible server) | "anthropic"
    model: str
    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}]
    params: dict = field(default_factory=dict)  # temperature, max_tokens, top_p, frequency_penalty, seed, ...
    tools: list[dict] | None = None  # [{"name", "description", "parameters": <JSON schema>}]
    response_schema: dict | None = None  # {"name": str, "schema": <JSON schema>}
    base_url: str | None = None  # None: LLM_BASE_URL / ANTHROPIC_BASE_URL at call time, else the SDK default
    timeout_s: float = 60.0  # total limit of one attempt (connect + whole stream)
    ttft_s: float | None = None  # limit to the first token (text or tool-call delta); None: the total
    idle_s: float | None = None  # limit on a silence between two chunks after the first token; None: none
    structured: str = "json_schema"  # how response_schema is asked for: one of STRUCTURED_MODES


@dataclass
class LLMResult:
    text: str
    tool_calls: list[dict]  # [{"id", "name", "arguments": dict}]
    parsed: dict | None  # structured output when response_schema was given
    model: str  # the model id as the server reported it
    input_tokens: int | None
    output_tokens: int | None
    finish_reason: str
    ttft_ms: int | None  # time to the first text delta (or first event for tool-only replies)
    latency_ms: int
    response: dict  # JSON-able summary for the log


class ProviderError(Exception):
    """One failed attempt. `retryable` tells the caller whether another attempt may succeed.

    A timeout carries `limit`, the one that fired: "ttft", "idle" or "total" (LIMITS).
    """

    def __init__(
        self,
        kind: str,
        message: str = "",
        *,
        status: int | None = None,
        retry_after: float | None = None,
        partial_text: str = "",
        ttft_ms: int | None = None,
        latency_ms: int | None = None,
        retryable: bool | None = None,
        body: Any = None,
        limit: str | None = None,
    ):
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind
        self.message = message
        self.retryable = kind in RETRYABLE_KINDS if retryable is None else retryable
        self.status = status
        self.retry_after = retry_after
        self.partial_text = partial_text
        self.ttft_ms = ttft_ms
        self.latency_ms = latency_ms
        self.body = body
        self.limit = limit

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "message": self.message,
            "retryable": self.retryable,
            "status": self.status,
            "retry_after": self.retry_after,
            "partial_text": self.partial_text,
            "ttft_ms": self.ttft_ms,
            "latency_ms": self.latency_ms,
            "limit": self.limit,
        }


BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 8.0
RETRY_AFTER_CAP_S = 120.0


def backoff_s(failures: int, retry_after: float | None) -> float:
    """The wait before the next attempt after `failures` failed ones: exponential with jitter (1, 2, 4, 8 s at
    most, plus up to 0.5 s); a provider's Retry-After wins when it asks for longer (up to RETRY_AFTER_CAP_S)."""
    import random

    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (failures - 1)) + random.uniform(0, 0.5)
    if retry_after:
        delay = max(delay, min(float(retry_after), RETRY_AFTER_CAP_S))
    return delay


def estimate_tokens(messages) -> int:
    """A rough, cautious token count for context-budget checks: ASCII text at 4 characters a token, every
    other character (Chinese, accents, symbols) a token of its own, plus a little per message."""
    ascii_chars = other = count = 0
    for message in messages or []:
        count += 1
        content = message.get("content") if isinstance(message, dict) else message
        if content is None:
            continue
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        wide = sum(1 for ch in text if ord(ch) > 127)
        other += wide
        ascii_chars += len(text) - wide
    return ascii_chars // 4 + other + 4 * count


# --------------------------------------------------------------------------- deadline + server-sent events


class _DeadlineExceeded(Exception):
    def __init__(self, limit: str):
        super().__init__(limit)
        self.limit = limit


def _sse(response, progress) -> Iterator[tuple[str | None, str]]:
    """Yield (event, data) from a server-sent-events body, checking the attempt's limits on
    every network chunk (so a server that trickles keep-alives forever still times out)."""
    buffer = b""
    event: str | None = None
    data: list[str] = []
    for chunk in response.iter_bytes():
        progress.chunk()
        buffer += chunk
        while True:
            cut = buffer.find(b"\n")
            if cut < 0:
                break
            line, buffer = buffer[:cut].rstrip(b"\r"), buffer[cut + 1 :]
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data = None, []
                continue
            if line.startswith(b":"):
                continue  # a comment / keep-alive
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value.decode("utf-8"))
            elif name == b"event":
                event = value.decode("utf-8")
    if data:
        yield event, "\n".join(data)


# --------------------------------------------------------------------------- clients

_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def _settings(request: LLMRequest) -> tuple[str | None, str]:
    if request.provider == "openai":
        base_url = request.base_url or os.environ.get("LLM_BASE_URL") or None
        key = os.environ.get("LLM_API_KEY") or NO_KEY
    elif request.provider == "anthropic":
        base_url = request.base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        key = os.environ.get("ANTHROPIC_API_KEY") or NO_KEY
    else:
        raise ProviderError("bad_request", f"unknown provider {request.provider!r}", retryable=False)
    return base_url, key


def _client(provider: str, base_url: str | None, key: str):
    cache_key = (provider, base_url, key)
    client = _clients.get(cache_key)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            http = httpx2.Client(
                limits=httpx2.Limits(**POOL_LIMITS),
                timeout=httpx2.Timeout(60.0, connect=10.0),
                follow_redirects=True,
            )
            cls = openai.OpenAI if provider == "openai" else anthropic.Anthropic
            kwargs: dict = {"api_key": key, "max_retries": 0, "http_client": http}
            if base_url:
                kwargs["base_url"] = base_url
            client = cls(**kwargs)
            _clients[cache_key] = client
    return client


def clients_close() -> None:
    """Close every cached client (tests, process shutdown)."""
    with _clients_lock:
        for client in _clients.values():
            try:
                client.close()
            except Exception:
                pass
        _clients.clear()


# --------------------------------------------------------------------------- error mapping


def _retry_after(headers) -> float | None:
    if not headers:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms:
            return float(ms) / 1000.0
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except Exception:
        return None


def _error_fields(body) -> tuple[str, str, str]:
    """(type, code, message) from an OpenAI or Anthropic error body."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if not isinstance(body, dict):
        return "", "", str(body or "")
    return str(body.get("type") or ""), str(body.get("code") or ""), str(body.get("message") or "")


def _classify(status: int | None, body, message: str) -> str:
    etype, code, emsg = _error_fields(body)
    text = " ".join((etype, code, emsg, message or "")).lower()
    spend = any(word in text for word in _SPEND_WORDS)
    if etype == "overloaded_error" or status == 529:
        return "overloaded"
    if status == 429 or etype in ("rate_limit_error", "rate_limit_exceeded"):
        return "spend_cap" if spend or code == "insufficient_quota" else "rate_limit"
    if status == 401 or etype == "authentication_error":
        return "auth"
    if status in (402,) or (status in (400, 403) and spend):
        return "spend_cap"
    if status == 403 or etype == "permission_error":
        return "auth"
    if status in (400, 413, 422) or etype == "invalid_request_error":
        return "context_overflow" if any(word in text for word in _CONTEXT_WORDS) else "bad_request"
    if status == 408:
        return "timeout"
    if status is not None and status >= 500:
        return "server"
    if status is not None and 400 <= status < 500:
        return "bad_request"
    if etype in ("api_error", "server_error") or status in (None, 200):
        return "server"  # an error event in the middle of a stream
    return "server"


def _map_exception(exc: BaseException, started: bool) -> ProviderError:
    """Map an SDK / transport exception to a ProviderError. `started`: the response had begun."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, _DeadlineExceeded):
        return ProviderError("timeout", f"passed its {exc.limit} limit", limit=exc.limit)
    if isinstance(exc, (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)):
        return ProviderError("timeout", "no data from the provider within the timeout")
    if isinstance(exc, (openai.APIStatusError, anthropic.APIStatusError)):
        status = exc.status_code
        body = exc.body
        message = _error_fields(body)[2] or str(exc)
        # an "error" event inside a 200 stream carries the error in the body, not the status
        kind = _classify(None if status == 200 else status, body, message)
        headers = getattr(getattr(exc, "response", None), "headers", None)
        return ProviderError(
            kind, message, status=status if status != 200 else None,
            retry_after=_retry_after(headers) if status != 200 else None, body=body,
        )
    if isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError, httpx2.TransportError)):
        if started:
            return ProviderError("dropped", f"the stream broke off: {exc.__cause__ or exc}")
        return ProviderError("connection", f"could not reach the provider: {exc.__cause__ or exc}")
    if isinstance(exc, (openai.APIError, anthropic.APIError)):
        body = getattr(exc, "body", None)
        message = _error_fields(body)[2] or str(exc)
        return ProviderError(_classify(None, body, message), message, body=body)
    if isinstance(exc, httpx2.HTTPError):
        return ProviderError("dropped" if started else "connection", str(exc))
    raise exc


# --------------------------------------------------------------------------- JSON helpers


def _json_from_text(text: str):
    """Parse JSON from a reply: the whole text, a fenced block, or the outermost {...}."""
    text = (text or "").strip()
    if not text:
        return None
    candidates = [text]
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        candidates.append(fence.group(1).strip())
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _tool_call(call_id, name, raw_args) -> dict:
    if isinstance(raw_args, dict):
        return {"id": call_id, "name": name, "arguments": raw_args}
    raw_args = raw_args or ""
    try:
        args = json.loads(raw_args) if raw_args.strip() else {}
    except ValueError:
        args = None
    if not isinstance(args, dict):
        return {"id": call_id, "name": name, "arguments": {}, "arguments_raw": raw_args}
    return {"id": call_id, "name": name, "arguments": args}


# --------------------------------------------------------------------------- the call


class _Progress:
    """What one attempt has seen so far (for the result, or for the error's partial_text), and its limits.

    The calling thread reports every network chunk and token; the watchdog thread reads the times
    and, once a limit has passed, shuts the socket (`cut_off`). Both sides take `_lock` around the
    socket so that it is never shut after the call has handed its connection back to the pool.
    """

    def __init__(self, request: LLMRequest, on_delta):
        self.request = request
        self.on_delta = on_delta
        self.t0 = time.monotonic()
        self.total_s = max(0.05, float(request.timeout_s))
        self.ttft_s = self.total_s if request.ttft_s is None else min(self.total_s, max(0.05, float(request.ttft_s)))
        self.idle_s = None if request.idle_s is None else max(0.05, float(request.idle_s))
        self.parts: list[str] = []
        self.first_text: float | None = None
        self.first_event: float | None = None
        self.first_token: float | None = None  # a text or tool-call delta: the TTFT limit is met
        self.last_chunk = self.t0
        self.started = False
        self.cut: tuple[str, float] | None = None  # (limit, seconds since the start) once the watchdog fired
        self._stream = None  # the connection's network stream while the body is read
        self._lock = threading.Lock()

    def overdue(self, now: float) -> str | None:
        """Return the limit this attempt has passed at `now` (the earliest one), or None."""
        fired = []
        if self.first_token is None:
            if now >= self.t0 + self.ttft_s:
                fired.append((self.t0 + self.ttft_s, 0, "ttft"))
        elif self.idle_s is not None and now >= self.last_chunk + self.idle_s:
            fired.append((self.last_chunk + self.idle_s, 1, "idle"))
        if now >= self.t0 + self.total_s:
            fired.append((self.t0 + self.total_s, 2, "total"))
        return min(fired)[2] if fired else None

    def check(self):
        if self.cut is not None:
            raise _DeadlineExceeded(self.cut[0])
        limit = self.overdue(time.monotonic())
        if limit is not None:
            raise _DeadlineExceeded(limit)

    def chunk(self):
        self.last_chunk = time.monotonic()
        self.check()

    def event(self):
        if self.first_event is None:
            self.first_event = time.monotonic()
        self.check()

    def token(self):
        if self.first_token is None:
            self.first_token = time.monotonic()

    def text(self, delta: str):
        if not delta:
            return
        if self.first_text is None:
            self.first_text = time.monotonic()
        self.token()
        self.parts.append(delta)
        if self.on_delta is not None:
            self.on_delta(delta)

    # -- the socket, for the watchdog

    def begin(self, http_response) -> None:
        """The response headers have arrived: hand the socket to the watchdog."""
        self.started = True
        timeout = http_response.request.extensions.get("timeout")
        if isinstance(timeout, dict):
            # httpx reads this when the body starts: the header phase's read timeout (min(ttft, total))
            # would otherwise also cut a legitimate silence of up to idle_s between two chunks.
            timeout["read"] = self.total_s + BACKSTOP_S
        stream = http_response.extensions.get("network_stream")
        with self._lock:
            self._stream = stream
            cut = self.cut is not None
        if cut:  # the limit passed while the headers were on their way
            _shut(stream)

    def end(self) -> None:
        """The body is read (or abandoned): the connection is no longer the watchdog's to shut."""
        with self._lock:
            self._stream = None

    def cut_off(self, limit: str) -> None:
        """Called by the watchdog: record the limit and shut the socket so the blocked read returns."""
        with self._lock:
            if self.cut is None:
                self.cut = (limit, time.monotonic() - self.t0)
            stream = self._stream
            if stream is not None:
                _shut(stream)

    def timeout_error(self, limit: str | None = None) -> ProviderError:
        """The error of an attempt that ran out of time, naming the limit that fired."""
        elapsed = time.monotonic() - self.t0
        if self.cut is not None:
            limit = self.cut[0]
        if limit is None:  # a read timeout: a silence, in the phase it fell in
            limit = self.overdue(time.monotonic()) or (
                "ttft" if self.first_token is None else "idle" if self.idle_s is not None else "total"
            )
        if limit == "ttft":
            message = f"no first token within {self.ttft_s:g} s"
        elif limit == "idle":
            message = f"the stream was silent for {self.idle_s:g} s"
        else:
            message = f"ran past its {self.total_s:g} s total"
        return ProviderError("timeout", f"{message} (cut after {elapsed:.1f} s)", limit=limit)

    def ms(self, t):
        return None if t is None else int(round((t - self.t0) * 1000))

    @property
    def ttft_ms(self):
        return self.ms(self.first_text if self.first_text is not None else self.first_event)

    @property
    def latency_ms(self):
        return self.ms(time.monotonic())

    def fail(self, error: ProviderError) -> ProviderError:
        error.partial_text = "".join(self.parts)
        error.ttft_ms = self.ttft_ms
        error.latency_ms = self.latency_ms
        return error


def _shut(stream) -> None:
    """Shut a connection's socket from another thread: a read blocked on it returns at once."""
    try:
        sock = stream.get_extra_info("socket")
    except Exception:
        sock = None
    if sock is None:
        return
    try:
        # socket.socket's own shutdown, not SSLSocket's: that one also drops the SSL object under
        # the reading thread's feet; the reader then sees the end of the stream and fails cleanly.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _Watchdog:
    """One daemon thread per process that cuts every call in flight that passed one of its limits."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._calls: set[_Progress] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, progress: _Progress) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="llm-watchdog", daemon=True)
                self._thread.start()
            self._calls.add(progress)
            self._cond.notify()

    def forget(self, progress: _Progress) -> None:
        with self._cond:
            self._calls.discard(progress)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._calls:
                    self._cond.wait()  # nothing in flight: sleep until a call starts
                calls = list(self._calls)
            now = time.monotonic()
            for progress in calls:
                try:
                    limit = progress.overdue(now)
                    if limit is not None:
                        progress.cut_off(limit)
                except Exception:  # one odd call must not stop the watchdog of all the others
                    pass
            time.sleep(WATCHDOG_TICK_S)


_watchdog = _Watchdog()
# A forked child (Celery's prefork pool) has no watchdog thread and none of the parent's calls.
os.register_at_fork(after_in_child=_watchdog._reset)


def _timeout(progress: _Progress) -> httpx2.Timeout:
    # Until the response headers arrive there is no socket for the watchdog to shut: the read timeout
    # bounds that phase at the first limit that can pass in it.
    first = min(progress.ttft_s, progress.total_s)
    return httpx2.Timeout(first, connect=min(first, 10.0), pool=first)


def _is_timeout(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _is_connect_timeout(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, httpx2.ConnectTimeout):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def llm_call(request: LLMRequest, on_delta: Callable[[str], None] | None = None) -> LLMResult:
    """One attempt, streaming; text deltas go to on_delta as they arrive. Raises ProviderError.

    No retries here (the SDKs' max_retries=0): the caller retries so that each attempt is logged
    as its own row. A timeout names its limit (`ProviderError.limit`) and keeps the partial text.
    """
    if request.provider not in PROVIDERS:
        raise ProviderError("bad_request", f"unknown provider {request.provider!r}", retryable=False)
    if request.structured not in STRUCTURED_MODES:
        raise ProviderError("bad_request", f"unknown structured-output mode {request.structured!r}", retryable=False)
    base_url, key = _settings(request)
    client = _client(request.provider, base_url, key)
    progress = _Progress(request, on_delta)
    call = _openai_call if request.provider == "openai" else _anthropic_call
    _watchdog.watch(progress)
    try:
        return call(client, request, progress, base_url)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        status_error = isinstance(exc, (openai.APIStatusError, anthropic.APIStatusError, ProviderError))
        if isinstance(exc, _DeadlineExceeded):
            error = progress.timeout_error(exc.limit)
        elif progress.cut is not None and not status_error:
            error = progress.timeout_error()  # the watchdog shut the socket: whatever broke, it was the limit
        elif _is_connect_timeout(exc):
            error = ProviderError("timeout", f"could not connect within {min(progress.ttft_s, 10.0):g} s", limit="ttft")
        elif _is_timeout(exc):
            error = progress.timeout_error()
        else:
            try:
                error = _map_exception(exc, progress.started)
            except Exception:
                raise exc
        raise progress.fail(error) from exc
    finally:
        _watchdog.forget(progress)


def _stream_error(event: str | None, payload) -> ProviderError | None:
    """An error delivered inside a 200 stream (OpenAI: {"error": ...}; Anthropic: event: error)."""
    if isinstance(payload, dict) and (event == "error" or payload.get("type") == "error" or isinstance(payload.get("error"), dict)):
        message = _error_fields(payload)[2] or "an error event in the stream"
        return ProviderError(_classify(None, payload, message), message, body=payload)
    return None


# ----------------------------------------------------------------- OpenAI-compatible


def _schema_instruction(response_schema: dict) -> str:
    schema = json.dumps(response_schema["schema"], ensure_ascii=False, separators=(",", ":"))
    return SCHEMA_INSTRUCTION.format(name=response_schema["name"], schema=schema)


def _messages(request: LLMRequest) -> list[dict]:
    """The request's messages; where the server does not enforce the schema, it is appended to the
    first system message as an instruction (a system message of its own when there is none)."""
    messages = [dict(m) for m in request.messages]
    if not request.response_schema or request.structured == "json_schema":
        return messages
    instruction = _schema_instruction(request.response_schema)
    for message in messages:
        if message.get("role") != "system":
            continue
        content = message.get("content")
        if isinstance(content, list):  # content parts
            message["content"] = list(content) + [{"type": "text", "text": instruction}]
        else:
            message["content"] = f"{content}\n\n{instruction}" if content else instruction
        return messages
    return [{"role": "system", "content": instruction}] + messages


def _openai_kwargs(request: LLMRequest, base_url: str | None, progress: _Progress) -> dict:
    params = dict(request.params or {})
    kwargs: dict = {
        "model": request.model,
        "messages": _messages(request),
        "stream": True,
        "stream_options": {"include_usage": True},
        "timeout": _timeout(progress),
    }
    if "max_tokens" in params:
        value = params.pop("max_tokens")
        # OpenAI's own API wants max_completion_tokens (reasoning models refuse max_tokens);
        # local OpenAI-compatible servers understand max_tokens.
        official = not base_url or "api.openai.com" in base_url
        kwargs["max_completion_tokens" if official else "max_tokens"] = value
    if request.tools:
        kwargs["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": t.get("parameters") or {"type": "object", "properties": {}},
                },
            }
            for t in request.tools
        ]
        params.setdefault("tool_choice", "auto")
    if request.response_schema and request.structured == "json_schema":
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": request.response_schema["name"],
                "schema": request.response_schema["schema"],
                "strict": request.response_schema.get("strict", True),
            },
        }
    elif request.response_schema and request.structured == "json_object":
        kwargs["response_format"] = {"type": "json_object"}
    extra = {}
    for name, value in params.items():
        if name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "stop",
                    "tool_choice", "max_completion_tokens", "n", "logit_bias", "user", "parallel_tool_calls"):
            kwargs[name] = value
        else:
            extra[name] = value  # server-specific (top_k, repeat_penalty, min_p, ...)
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def _openai_call(client, request: LLMRequest, progress: _Progress, base_url: str | None) -> LLMResult:
    kwargs = _openai_kwargs(request, base_url, progress)
    state = {"model": request.model, "id": None, "finish": None, "done": False,
             "input_tokens": None, "output_tokens": None}
    calls: dict[int, dict] = {}
    # The SDK builds, authenticates and sends the request and maps error statuses; the body is
    # parsed here (the SDK's typed chunk objects cost ~0.1 ms each, which adds up to whole cores
    # at hundreds of streams per process).
    with client.chat.completions.with_streaming_response.create(**kwargs) as response:
        progress.begin(response.http_response)
        try:
            _openai_read(response, progress, calls, state)
        finally:
            progress.end()
    finish = state["finish"]
    if finish is None or not state["done"]:
        missing = "a finish reason" if finish is None else "[DONE]"
        raise ProviderError("dropped", f"the stream ended without {missing}")
    text = "".join(progress.parts)
    tool_calls = [_tool_call(c["id"] or f"call_{i}", c["name"], c["arguments"]) for i, c in sorted(calls.items())]
    parsed = _json_from_text(text) if request.response_schema else None
    return _result(progress, text, tool_calls, parsed, state["model"], state["id"], finish,
                   state["input_tokens"], state["output_tokens"])


def _openai_read(response, progress: _Progress, calls: dict, state: dict) -> None:
    """Read an OpenAI-compatible event stream into `calls` (tool calls by index) and `state`."""
    for event, data in _sse(response, progress):
        progress.event()
        if state["done"]:
            continue  # read to the end so the connection goes back to the pool
        if data.startswith("[DONE]"):
            state["done"] = True
            continue
        chunk = json.loads(data)
        error = _stream_error(event, chunk)
        if error is not None:
            raise error
        state["model"] = chunk.get("model") or state["model"]
        state["id"] = chunk.get("id") or state["id"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            state["input_tokens"] = usage.get("prompt_tokens", state["input_tokens"])
            state["output_tokens"] = usage.get("completion_tokens", state["output_tokens"])
        for choice in chunk.get("choices") or []:
            if (choice.get("index") or 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                progress.text(delta["content"])
            for position, tc in enumerate(delta.get("tool_calls") or []):
                progress.token()
                index = tc.get("index") if tc.get("index") is not None else position
                slot = calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                function = tc.get("function") or {}
                if function.get("name") and not slot["name"]:
                    slot["name"] = function["name"]
                arguments = function.get("arguments")
                if isinstance(arguments, dict):  # some local servers send the object whole
                    arguments = json.dumps(arguments)
                if arguments:
                    slot["arguments"] += arguments
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]


# ----------------------------------------------------------------- Anthropic


# The string tool choices of the study file, in the Messages API's words.
_ANTHROPIC_TOOL_CHOICE = {"auto": {"type": "auto"}, "required": {"type": "any"}, "any": {"type": "any"},
                          "none": {"type": "none"}}


def _anthropic_kwargs(request: LLMRequest, progress: _Progress) -> dict:
    params = dict(request.params or {})
    system_parts, messages = [], []
    for message in _messages(request):
        if message.get("role") == "system":
            system_parts.append(message.get("content") or "")
        else:
            messages.append({"role": message["role"], "content": message.get("content")})
    kwargs: dict = {
        "model": request.model,
        "messages": messages,
        "max_tokens": int(params.pop("max_tokens", None) or params.pop("max_completion_tokens", None) or ANTHROPIC_DEFAULT_MAX_TOKENS),
        "stream": True,
        "timeout": _timeout(progress),
    }
    if system_parts:
        kwargs["system"] = "\n\n".join(str(p) for p in system_parts)
    tools = [
        {
            "name": t["name"],
            "description": t.get("description", ""),
            "input_schema": t.get("parameters") or {"type": "object", "properties": {}},
        }
        for t in request.tools or []
    ]
    choice = params.pop("tool_choice", None)
    if isinstance(choice, str):
        choice = _ANTHROPIC_TOOL_CHOICE.get(choice, {"type": "tool", "name": choice})
    if choice is not None and tools:
        kwargs["tool_choice"] = choice
    if request.response_schema and request.structured == "json_schema":
        # the forced tool is Anthropic's way to enforce a schema; it wins over the tool choice
        name = request.response_schema["name"]
        tools.append(
            {
                "name": name,
                "description": "Give the answer as this structured output.",
                "input_schema": request.response_schema["schema"],
            }
        )
        kwargs["tool_choice"] = {"type": "tool", "name": name}
    if tools:
        kwargs["tools"] = tools
    if "stop" in params:
        stop = params.pop("stop")
        params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop or [])
    extra = {}
    for name, value in params.items():
        if name in _OPENAI_ONLY_PARAMS:
            continue
        if name in ("stop_sequences", "metadata", "system", "thinking", "service_tier"):
            kwargs[name] = value
        else:
            extra[name] = value  # temperature, top_p, top_k: not in this SDK's signature, sent as is
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def _anthropic_call(client, request: LLMRequest, progress: _Progress, base_url: str | None) -> LLMResult:
    model = request.model
    response_id = None
    finish = None
    stopped = False
    input_tokens = output_tokens = None
    blocks: dict[int, dict] = {}
    with client.messages.with_streaming_response.create(**_anthropic_kwargs(request, progress)) as response:
        progress.begin(response.http_response)
        try:
            for event, data in _sse(response, progress):
                progress.event()
                if event == "ping" or not data:
                    continue
                payload = json.loads(data)
                error = _stream_error(event, payload)
                if error is not None:
                    raise error
                kind = payload.get("type") or event
                if kind == "message_start":
                    message = payload.get("message") or {}
                    model = message.get("model") or model
                    response_id = message.get("id")
                    usage = message.get("usage") or {}
                    input_tokens = usage.get("input_tokens", input_tokens)
                    output_tokens = usage.get("output_tokens", output_tokens)
                elif kind == "content_block_start":
                    block = payload.get("content_block") or {}
                    index = payload.get("index", len(blocks))
                    if block.get("type") == "tool_use":
                        progress.token()
                        blocks[index] = {"type": "tool_use", "id": block.get("id"), "name": block.get("name") or "",
                                         "json": "", "input": block.get("input")}
                    else:
                        blocks[index] = {"type": block.get("type")}
                        if block.get("type") == "text" and block.get("text"):
                            progress.text(block["text"])
                elif kind == "content_block_delta":
                    delta = payload.get("delta") or {}
                    if delta.get("type") == "text_delta":
                        progress.text(delta.get("text") or "")
                    elif delta.get("type") == "input_json_delta":
                        progress.token()
                        index = payload.get("index", 0)
                        blocks.setdefault(index, {"type": "tool_use", "id": None, "name": "", "json": "", "input": None})
                        blocks[index]["json"] += delta.get("partial_json") or ""
                elif kind == "message_delta":
                    delta = payload.get("delta") or {}
                    finish = delta.get("stop_reason") or finish
                    usage = payload.get("usage") or {}
                    if usage.get("output_tokens") is not None:
                        output_tokens = usage["output_tokens"]
                    if usage.get("input_tokens") is not None:
                        input_tokens = usage["input_tokens"]
                elif kind == "message_stop":
                    stopped = True
        finally:
            progress.end()
    if not stopped or finish is None:
        missing = "message_stop" if not stopped else "a stop reason"
        raise ProviderError("dropped", f"the stream ended without {missing}")
    text = "".join(progress.parts)
    tool_calls = []
    for index in sorted(blocks):
        block = blocks[index]
        if block["type"] != "tool_use":
            continue
        raw = block["json"] if block["json"] else (block["input"] or {})
        tool_calls.append(_tool_call(block["id"] or f"toolu_{index}", block["name"], raw))
    parsed = None
    if request.response_schema and request.structured != "json_schema":
        parsed = _json_from_text(text)
    elif request.response_schema:
        name = request.response_schema["name"]
        forced = [c for c in tool_calls if c["name"] == name]
        if forced:
            parsed = forced[0]["arguments"]
            tool_calls = [c for c in tool_calls if c is not forced[0]]
        else:
            parsed = _json_from_text(text)
    return _result(progress, text, tool_calls, parsed, model, response_id, finish, input_tokens, output_tokens)


# ----------------------------------------------------------------- result


def _result(progress, text, tool_calls, parsed, model, response_id, finish, input_tokens, output_tokens) -> LLMResult:
    latency_ms = progress.latency_ms
    ttft_ms = progress.ttft_ms
    summary = {
        "id": response_id,
        "model": model,
        "finish_reason": finish,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        "text": text,
        "tool_calls": tool_calls,
    }
    if parsed is not None:
        summary["parsed"] = parsed
    return LLMResult(
        text=text,
        tool_calls=tool_calls,
        parsed=parsed,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        finish_reason=finish,
        ttft_ms=ttft_ms,
        latency_ms=latency_ms,
        response=summary,
    )
