"""Know an arm's endpoint before launch: probe what it does with the arm's own settings.

`endpoint_probe(arm=...)` sends a handful of tiny requests through the production code path
(`explainers.providers.llm_call`), so what it reports is what the arm will meet: streaming, usage,
tool calls under `auto` and under `required`, `json_schema` and `json_object` output, the context window,
time to first token and output speed, and from those the `tool_choice` and `structured_output` to use.
Every call is short (PROBE_CALL_S at most, and the whole probe of one arm stays within PROBE_BUDGET_S),
and nothing is raised: an error becomes part of the report.

`version_llm_check(version=...)` probes every chat and agentic arm of a version and stores the report
on it (`StudyVersion.llm_report`) with when and from which host it was checked.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import httpx2
import jsonschema
from django.conf import settings
from django.utils import timezone

from studies.models import StudyVersion
from studies.services import study_version_llm_report_set

from .arms import LLM_ARM_KINDS
from .endpoints import llm_endpoint
from .providers import LLMRequest, ProviderError, llm_call

PROBE_BUDGET_S = 45.0       # the whole probe of one arm
PROBE_CALL_S = 15.0         # one probe call (a slow first token shows as a timeout, which is the point)
FIRST_CALL_S = 30.0         # the first: a busy local server may queue it behind other requests
MODELS_TIMEOUT_S = 5.0      # GET /v1/models and llama.cpp's /props
CONTEXT_PROBE_TOKENS = 4600  # just past a 4,096-token window, the smallest the field notes met
DEFAULT_MODEL = "default"   # `llm_check` without a study: local servers ignore the model name
UNREACHABLE = frozenset({"connection", "auth"})

_ADD_TOOL = {
    "name": "add",
    "description": "Add two integers and return their sum.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}
_ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}
# Keep "<" out of every probe prompt: the scripted model reads tagged system prompts as the explainer's.
_SYSTEM = "You are a helpful assistant. Be brief."
_COUNT = "Count from 1 to 20, separated by spaces. Write nothing else."
_TOOL_ASK = "What is 17 + 25? Use the add tool to compute it."
_JSON_ASK = 'What is 17 + 25? Answer in JSON as {"answer": <the sum>}.'


def endpoint_probe(*, arm: dict, budget_s: float = PROBE_BUDGET_S) -> dict:
    """Probe the endpoint of one chat or agentic arm with its own settings; return the report (never raise)."""
    started = time.monotonic()
    llm = arm.get("llm") or {}
    endpoint = llm_endpoint(llm) if llm else None
    report: dict = {
        "arm": arm.get("id"), "kind": arm.get("kind"),
        "provider": llm.get("provider"), "model": llm.get("model"),
        "base_url": endpoint.base_url if endpoint else llm.get("base_url"),
        "endpoint": endpoint is not None, "scripted": bool(endpoint and endpoint.scripted),
        "reachable": False, "streaming": False, "usage": False,
        "tools_auto": None, "tools_required": None, "tools_as_text": False,
        "json_schema": None, "json_object": None,
        "context_window": {"tokens": None, "source": None},
        "ttft_ms": None, "tokens_per_s": None,
        "recommended": {"tool_choice": None, "structured_output": None},  # None: not measured
        "errors": {},
        "checked_at": timezone.now().isoformat(),
    }
    if endpoint is None:
        report["errors"]["endpoint"] = "no language model is configured for this arm here"
        return _finish(report, started)
    probe = _Probe(llm, endpoint, deadline=started + budget_s, errors=report["errors"])

    result, deltas, error = probe.call("stream", [_user(_COUNT)], max_tokens=80, limit_s=FIRST_CALL_S)
    report["reachable"] = result is not None or (error is not None and error.kind not in UNREACHABLE
                                                 and (error.status is not None or error.kind == "dropped"))
    if result is not None:
        report["streaming"] = deltas >= 2 or (deltas >= 1 and (result.output_tokens or 0) <= 1)
        report["usage"] = result.input_tokens is not None and result.output_tokens is not None
        report["ttft_ms"] = result.ttft_ms
        report["tokens_per_s"] = _speed(result)
    models = probe.models()
    report["reachable"] = report["reachable"] or models is not None
    report["context_window"] = _context_from_models(models, llm.get("model")) or report["context_window"]
    if not report["reachable"] or (error is not None and error.kind == "timeout"):
        # nothing more to learn from an endpoint that does not answer, or one too slow for a short call
        for name in ("tools_auto", "tools_required", "json_schema", "json_object", "context"):
            report["errors"].setdefault(name, "skipped: the first probe call failed")
        return _finish(report, started)

    report["tools_auto"], auto_text = probe.tools("auto")
    report["tools_required"], _ = probe.tools("required")
    report["tools_as_text"] = bool(not report["tools_auto"] and auto_text and _ADD_TOOL["name"] in auto_text
                                   and "{" in auto_text)
    report["json_schema"] = probe.json_schema()
    report["json_object"] = probe.json_object()
    if report["context_window"]["tokens"] is None:
        report["context_window"] = probe.context()
    report["recommended"] = recommendations(report)
    return _finish(report, started)


def recommendations(report: dict) -> dict:
    """The tool choice and structured-output strategy the probe's findings call for (None: not measured)."""
    tool_choice = structured = None
    if report.get("tools_auto"):
        tool_choice = "auto"
    elif report.get("tools_required"):
        tool_choice = "required"
    elif report.get("tools_auto") is not None or report.get("tools_required") is not None:
        tool_choice = "none"
    if report.get("json_schema"):
        structured = "json_schema"
    elif report.get("json_object"):
        structured = "json_object"
    elif report.get("json_schema") is not None or report.get("json_object") is not None:
        structured = "instructions"
    return {"tool_choice": tool_choice, "structured_output": structured}


def version_probe(*, spec: dict) -> dict:
    """Probe every chat and agentic arm of a study spec; return the report to store on the version."""
    arms = [a for a in spec.get("arms") or [] if a["kind"] in LLM_ARM_KINDS]
    # side by side, so that a version takes one arm's PROBE_BUDGET_S however many arms it has
    with ThreadPoolExecutor(max_workers=max(1, min(len(arms), 8))) as pool:
        reports = list(pool.map(lambda arm: endpoint_probe(arm=arm), arms))
    return {"checked_at": timezone.now().isoformat(), "host": socket.gethostname(),
            "arms": {arm["id"]: report for arm, report in zip(arms, reports)}}


def version_llm_check(*, version: StudyVersion) -> dict:
    """Probe the version's LLM arms (outside any transaction: these are network calls) and store the report."""
    report = version_probe(spec=version.spec)
    study_version_llm_report_set(version_id=version.pk, report=report)
    version.llm_report = report
    return report


def default_endpoint_probe(*, model: str = DEFAULT_MODEL) -> dict:
    """Probe the environment's default endpoint (LLM_BASE_URL, or the provider's API with LLM_API_KEY)."""
    arm = {"id": "(default)", "kind": "chat",
           "llm": {"provider": "openai", "model": model, "base_url": settings.LLM_BASE_URL or None, "params": {}}}
    return endpoint_probe(arm=arm)


# --- the calls --------------------------------------------------------------------------------------


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _request(**fields) -> LLMRequest:
    """An LLMRequest with the fields this version of the provider layer has (ttft_s, idle_s, structured)."""
    known = {f.name for f in dataclasses.fields(LLMRequest)}
    return LLMRequest(**{k: v for k, v in fields.items() if k in known})


class _Probe:
    def __init__(self, llm: dict, endpoint, *, deadline: float, errors: dict):
        self.llm, self.endpoint, self.deadline, self.errors = llm, endpoint, deadline, errors
        self.provider = llm.get("provider") or "openai"

    def _timeout(self, limit_s: float) -> float:
        arm_limit = float(self.llm.get("timeout_s") or limit_s)
        return max(0.0, min(arm_limit, limit_s, self.deadline - time.monotonic()))

    def call(self, name: str, messages: list[dict], *, max_tokens: int = 48, params: dict | None = None,
             limit_s: float = PROBE_CALL_S, **fields) -> tuple:
        """One probe call; return (result or None, text deltas seen, ProviderError or None)."""
        timeout = self._timeout(limit_s)
        if timeout < 1.0:
            self.errors[name] = "skipped: the probe's time budget is used up"
            return None, 0, None
        merged = {k: v for k, v in (self.llm.get("params") or {}).items() if k not in ("tool_choice", "response_format")}
        merged.update(params or {})
        merged["max_tokens"] = max_tokens
        deltas = []
        request = _request(
            provider=self.provider, model=self.llm.get("model") or DEFAULT_MODEL,
            messages=[{"role": "system", "content": _SYSTEM}, *messages], params=merged,
            base_url=self.endpoint.base_url, timeout_s=timeout, ttft_s=timeout, idle_s=timeout, **fields,
        )
        try:
            return llm_call(request, on_delta=deltas.append), len(deltas), None
        except ProviderError as error:
            self.errors[name] = f"{error.kind}: {error.message}"[:300]
            return None, len(deltas), error
        except Exception as error:  # noqa: BLE001 - the probe reports every failure, it never raises
            self.errors[name] = f"{type(error).__name__}: {error}"[:300]
            return None, len(deltas), None

    def tools(self, choice: str) -> tuple[bool | None, str]:
        """Whether a tool call comes back under this tool choice (and the text when it does not)."""
        sent = choice
        if self.provider == "anthropic":
            sent = {"type": "auto"} if choice == "auto" else {"type": "any"}
        result, _, _ = self.call(f"tools_{choice}", [_user(_TOOL_ASK)], max_tokens=64,
                                 params={"tool_choice": sent}, tools=[_ADD_TOOL], tool_choice=choice)
        if result is None:
            return None, ""
        return any(c.get("name") == _ADD_TOOL["name"] for c in result.tool_calls), result.text

    def json_schema(self) -> bool | None:
        result, _, _ = self.call("json_schema", [_user(_JSON_ASK)], max_tokens=32,
                                 response_schema={"name": "probe_answer", "schema": _ANSWER_SCHEMA},
                                 structured="json_schema")
        if result is None:
            return None
        value = result.parsed if self.provider == "anthropic" else _json_whole(result.text)
        return _valid(value, _ANSWER_SCHEMA)

    def json_object(self) -> bool | None:
        if self.provider != "openai":
            return None  # the Messages API has no JSON mode: structured output goes through a forced tool
        if "structured" in {f.name for f in dataclasses.fields(LLMRequest)}:
            # the provider layer asks for JSON mode itself, with the schema as an instruction
            fields = {"structured": "json_object",
                      "response_schema": {"name": "probe_answer", "schema": _ANSWER_SCHEMA}}
            params = {}
        else:
            fields, params = {}, {"response_format": {"type": "json_object"}}
        result, _, _ = self.call("json_object", [_user(_JSON_ASK)], max_tokens=32, params=params, **fields)
        if result is None:
            return None
        return isinstance(_json_whole(result.text), dict)

    def context(self) -> dict:
        """A bounded probe: a prompt of ~CONTEXT_PROBE_TOKENS tokens is refused as too long, or not."""
        filler = "apple " * int(CONTEXT_PROBE_TOKENS * 0.8)
        result, _, error = self.call("context", [_user(filler + "\nReply with the word: ok.")], max_tokens=4)
        if result is not None:
            return {"tokens": None, "at_least": CONTEXT_PROBE_TOKENS, "source": "probe"}
        if error is not None and error.kind == "context_overflow":
            return {"tokens": None, "below": CONTEXT_PROBE_TOKENS, "source": "probe"}
        return {"tokens": None, "source": None}

    def models(self) -> dict | None:
        """What the server says of its models (GET /models, and llama.cpp's /props), or None."""
        base = self.endpoint.base_url
        if not base:
            base = "https://api.anthropic.com/v1" if self.provider == "anthropic" else "https://api.openai.com/v1"
        elif self.provider == "anthropic":
            base = base.rstrip("/") + "/v1"
        headers = {}
        if self.provider == "openai" and settings.LLM_API_KEY:
            headers["Authorization"] = f"Bearer {settings.LLM_API_KEY}"
        elif self.provider == "anthropic" and settings.ANTHROPIC_API_KEY:
            headers.update({"x-api-key": settings.ANTHROPIC_API_KEY, "anthropic-version": "2023-06-01"})
        out = None
        timeout = min(MODELS_TIMEOUT_S, max(0.5, self.deadline - time.monotonic()))
        try:
            with httpx2.Client(timeout=timeout, trust_env=False, headers=headers) as client:
                response = client.get(base.rstrip("/") + "/models")
                if response.status_code == 200:
                    out = {"models": response.json()}
                if not self.endpoint.scripted and self.endpoint.base_url:
                    parts = urlsplit(base)
                    props = client.get(urlunsplit((parts.scheme, parts.netloc, "/props", "", "")))
                    if props.status_code == 200:
                        out = {**(out or {}), "props": props.json()}
        except (httpx2.HTTPError, ValueError) as error:
            self.errors.setdefault("models", f"{type(error).__name__}: {error}"[:300])
        return out


def _json_whole(text: str):
    """The reply parsed as one JSON value (a fenced block or prose around it does not count), else None."""
    try:
        return json.loads((text or "").strip())
    except ValueError:
        return None


def _valid(value, schema) -> bool:
    if value is None:
        return False
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def _speed(result) -> float | None:
    """Output tokens per second after the first token (None when too little was timed to tell)."""
    if not result.output_tokens or result.ttft_ms is None:
        return None
    seconds = (result.latency_ms - result.ttft_ms) / 1000
    if seconds <= 0.01:
        return None
    return round(result.output_tokens / seconds, 1)


_CONTEXT_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length", "n_ctx")


def _context_from_models(found: dict | None, model: str | None) -> dict | None:
    """The context window the server reports: llama.cpp's /props n_ctx (the per-slot window it enforces),
    vLLM's max_model_len, a `context_length` field, or llama.cpp's meta.n_ctx_train (the model's own)."""
    if not found:
        return None
    props = (found.get("props") or {}).get("default_generation_settings") or {}
    if isinstance(props.get("n_ctx"), int):
        return {"tokens": props["n_ctx"], "source": "props.n_ctx"}
    listing = found.get("models") or {}
    entries = [e for e in listing.get("data") or listing.get("models") or [] if isinstance(e, dict)]
    chosen = [e for e in entries if e.get("id") == model or e.get("name") == model] or entries[:1]
    for entry in chosen:
        for key in _CONTEXT_KEYS:
            if isinstance(entry.get(key), int):
                return {"tokens": entry[key], "source": f"models.{key}"}
        meta = entry.get("meta") or {}
        for key in ("n_ctx", "n_ctx_train"):
            if isinstance(meta.get(key), int):
                return {"tokens": meta[key], "source": f"models.meta.{key}"}
    return None


def _finish(report: dict, started: float) -> dict:
    report["elapsed_ms"] = int((time.monotonic() - started) * 1000)
    return report
