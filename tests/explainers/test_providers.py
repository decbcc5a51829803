"""explainers.providers through the real SDKs against the fake provider server in a subprocess."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from explainers import providers
from explainers.fakellm import FakeLLM
from explainers.providers import LLMRequest, ProviderError, estimate_tokens, llm_call

LOOKUP = {
    "name": "lookup_feature",
    "description": "Look up how the model uses one feature.",
    "parameters": {
        "type": "object",
        "properties": {"feature": {"type": "string"}, "depth": {"type": "integer"}},
        "required": ["feature", "depth"],
    },
}
LEARNER = {
    "name": "learner_model",
    "schema": {
        "type": "object",
        "properties": {
            "understands": {"type": "boolean"},
            "confidence": {"type": "number", "minimum": 0.2, "maximum": 1},
            "next_act": {"enum": ["explain", "ask", "example"]},
            "misconceptions": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["understands", "confidence", "next_act", "misconceptions"],
        "additionalProperties": False,
    },
}
PROVIDERS = ["openai", "anthropic"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    with FakeLLM(tmp_path_factory.mktemp("fakellm")) as server:
        yield server
    providers.clients_close()


@pytest.fixture(autouse=True)
def clean(fake):
    fake.reset()
    yield


def req(fake, provider="openai", text="Why was my loan denied?", **kwargs):
    base_url = fake.openai_base_url if provider == "openai" else fake.anthropic_base_url
    messages = kwargs.pop("messages", None) or [
        {"role": "system", "content": "You explain a loan model."},
        {"role": "user", "content": text},
    ]
    return LLMRequest(provider=provider, model=kwargs.pop("model", "fake-model"), messages=messages, base_url=base_url, **kwargs)


def expect_error(request, kind, within=None):
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        llm_call(request)
    elapsed = time.monotonic() - started
    assert info.value.kind == kind, info.value.as_dict()
    if within is not None:
        assert elapsed < within, elapsed
    return info.value


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streaming_text_deltas_ttft_and_usage(fake, provider):
    fake.set_behaviour(ttft_s=0.3, latency_s=0.6)
    deltas, stamps = [], []

    def on_delta(text):
        deltas.append(text)
        stamps.append(time.monotonic())

    started = time.monotonic()
    result = llm_call(req(fake, provider, params={"temperature": 0.2, "max_tokens": 200}), on_delta)
    assert result.text.startswith("(Scripted demo reply")
    assert "Why was my loan denied?" in result.text
    assert "".join(deltas) == result.text and len(deltas) > 10  # word by word, in order
    assert stamps[-1] - stamps[0] > 0.15  # really streamed, not delivered at the end
    assert 250 <= result.ttft_ms < 1000
    assert result.latency_ms >= 550 and stamps[0] - started < 0.5 * (stamps[-1] - started) + 0.3
    assert result.input_tokens and result.input_tokens > 0
    assert result.output_tokens == len(deltas)
    assert result.finish_reason == ("stop" if provider == "openai" else "end_turn")
    assert result.model == "fake-model" and result.tool_calls == [] and result.parsed is None
    assert result.response["text"] == result.text and result.response["usage"]["output_tokens"] == len(deltas)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_model_as_reported_and_usage_missing(fake, provider):
    fake.set_behaviour(model="served-model-7b", usage=False)
    result = llm_call(req(fake, provider))
    assert result.model == "served-model-7b"
    if provider == "openai":
        assert result.input_tokens is None and result.output_tokens is None
    assert result.text


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_call_assembled_from_pieces(fake, provider):
    args = {"feature": "debt-to-income ratio, the one the model weighs most", "depth": 2}
    fake.queue({"reply": "Let me check.", "tool_calls": [{"name": "lookup_feature", "arguments": args}]})
    result = llm_call(req(fake, provider, tools=[LOOKUP]))
    assert result.text == "Let me check."
    assert len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert call["name"] == "lookup_feature" and call["arguments"] == args and call["id"]
    assert result.finish_reason == ("tool_calls" if provider == "openai" else "tool_use")
    body = fake.requests()[-1]["body"]
    if provider == "openai":
        assert body["tools"][0]["function"]["parameters"] == LOOKUP["parameters"]
        assert body["tool_choice"] == "auto"
    else:
        assert body["tools"][0]["input_schema"] == LOOKUP["parameters"]


def test_tool_only_reply_has_ttft_and_two_calls(fake):
    calls = [{"name": "lookup_feature", "arguments": {"feature": "age", "depth": 1}},
             {"name": "lookup_feature", "arguments": {"feature": "income", "depth": 3}}]
    fake.queue({"tool_calls": calls, "ttft_s": 0.2})
    result = llm_call(req(fake, "openai", tools=[LOOKUP]))
    assert result.text == ""
    assert [c["arguments"] for c in result.tool_calls] == [c["arguments"] for c in calls]
    assert result.ttft_ms is not None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_structured_output_parsed(fake, provider):
    result = llm_call(req(fake, provider, response_schema=LEARNER))
    assert result.parsed == {"understands": False, "confidence": 0.2, "next_act": "explain", "misconceptions": []}
    assert result.tool_calls == []  # Anthropic's forced tool is the structured output, not a tool call
    body = fake.requests()[-1]["body"]
    if provider == "openai":
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["strict"] is True
        assert body["response_format"]["json_schema"]["schema"] == LEARNER["schema"]
    else:
        assert body["tool_choice"] == {"type": "tool", "name": "learner_model"}
        assert body["tools"][-1]["input_schema"] == LEARNER["schema"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_structured_output_scripted_and_from_text_when_tools_ignored(fake, provider):
    scripted = {"understands": True, "confidence": 0.9, "next_act": "ask", "misconceptions": ["age matters"]}
    fake.queue({"json": scripted}, {"json": scripted, "ignore_tools": True})
    assert llm_call(req(fake, provider, response_schema=LEARNER)).parsed == scripted
    # a local server that ignored the (forced) tool and wrote the JSON into the text
    result = llm_call(req(fake, provider, response_schema=LEARNER))
    assert result.parsed == scripted


def test_recorded_request_has_messages_params_and_no_key(fake, monkeypatch):
    monkeypatch.setenv("LLM_API_KEY", "sk-secret-test-key")
    messages = [
        {"role": "system", "content": "System prompt."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "Second question"},
    ]
    params = {"temperature": 0.1, "top_p": 0.9, "frequency_penalty": 0.3, "seed": 7, "max_tokens": 99, "top_k": 20}
    llm_call(req(fake, "openai", messages=messages, params=params))
    record = fake.requests()[-1]
    assert record["path"] == "/v1/chat/completions"
    assert record["body"]["messages"] == messages
    assert record["body"]["stream"] is True and record["body"]["stream_options"] == {"include_usage": True}
    for name in ("temperature", "top_p", "frequency_penalty", "seed", "top_k"):
        assert record["body"][name] == params[name]
    assert record["body"]["max_tokens"] == 99  # a non-OpenAI base URL gets max_tokens
    assert record["has_key"] is True
    assert not {"authorization", "x-api-key"} & {h.lower() for h in record["headers"]}
    assert "sk-secret-test-key" not in str(record)


def test_anthropic_request_shape(fake):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    llm_call(req(fake, "anthropic", messages=messages, params={"temperature": 0.3, "frequency_penalty": 0.5, "seed": 1}))
    body = fake.requests()[-1]["body"]
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["max_tokens"] == 1024 and body["temperature"] == 0.3
    assert "frequency_penalty" not in body and "seed" not in body  # the Messages API refuses them


def test_base_url_read_from_environment_at_call_time(fake, monkeypatch):
    monkeypatch.setenv("LLM_BASE_URL", fake.openai_base_url)
    request = LLMRequest(provider="openai", model="m", messages=[{"role": "user", "content": "env please"}])
    assert "env please" in llm_call(request).text
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.anthropic_base_url)
    request = LLMRequest(provider="anthropic", model="m", messages=[{"role": "user", "content": "env too"}])
    assert "env too" in llm_call(request).text


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limit_with_retry_after(fake, provider):
    fake.queue({"fail": "429", "retry_after_s": 2})
    error = expect_error(req(fake, provider), "rate_limit")
    assert error.retryable and error.status == 429 and error.retry_after == 2


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    "fail,kind,retryable,status",
    [
        ("500", "server", True, 500),
        ("529", "overloaded", True, 529),
        ("quota", "spend_cap", False, None),
        ("context", "context_overflow", False, 400),
        ("401", "auth", False, 401),
        ("403", "auth", False, 403),
        ("400", "bad_request", False, 400),
    ],
)
def test_status_failures(fake, provider, fail, kind, retryable, status):
    fake.queue({"fail": fail})
    error = expect_error(req(fake, provider), kind)
    assert error.retryable is retryable
    if status is not None:
        assert error.status == status


@pytest.mark.parametrize("provider", PROVIDERS)
def test_hang_times_out_within_budget(fake, provider):
    fake.queue({"fail": "hang"})
    error = expect_error(req(fake, provider, timeout_s=1.0), "timeout", within=1.8)
    assert error.retryable and error.latency_ms >= 900


@pytest.mark.parametrize("provider", PROVIDERS)
def test_trickle_forever_still_times_out(fake, provider):
    fake.queue({"fail": "trickle", "chunk_delay_s": 0.1})
    error = expect_error(req(fake, provider, timeout_s=1.0), "timeout", within=1.8)
    assert error.retryable


def test_slow_stream_hits_total_budget(fake):
    fake.queue({"latency_s": 5})
    error = expect_error(req(fake, "openai", timeout_s=1.0), "timeout", within=1.8)
    assert error.partial_text  # what had streamed before the budget ran out


# ---------------------------------------------------------------- the three limits and the watchdog
# Each cut is measured with monotonic time around the call and must come within 1 s of its limit
# (the bound); the lower bound shows it was that limit, not an earlier one, that fired.

LONG_REPLY = " ".join(f"word{i}" for i in range(60))


def timed(request, seen=None):
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        llm_call(request, None if seen is None else seen.append)
    return info.value, time.monotonic() - started


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_silent_before_its_first_token_is_cut_within_1_s_of_ttft(fake, provider):
    # headers and the opening event arrive at once, then nothing: no byte ever wakes the reader
    fake.queue({"ttft_s": 60})
    error, elapsed = timed(req(fake, provider, timeout_s=20, ttft_s=1.5, idle_s=0.5))
    assert error.kind == "timeout" and error.limit == "ttft" and error.retryable, error.as_dict()
    assert 1.5 <= elapsed < 2.5, elapsed
    assert "no first token within 1.5 s" in error.message and error.partial_text == ""


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_server_that_never_sends_headers_is_cut_within_1_s_of_ttft(fake, provider):
    fake.queue({"fail": "hang"})
    error, elapsed = timed(req(fake, provider, timeout_s=20, ttft_s=1.5))
    assert error.kind == "timeout" and error.limit == "ttft", error.as_dict()
    assert 1.5 <= elapsed < 2.5, elapsed


@pytest.mark.parametrize("provider", PROVIDERS)
def test_keep_alives_without_a_token_are_cut_at_ttft(fake, provider):
    # bytes keep arriving (so a read timeout never fires), but no token does
    fake.queue({"fail": "trickle", "chunk_delay_s": 0.2})
    error, elapsed = timed(req(fake, provider, timeout_s=20, ttft_s=1.5, idle_s=0.5))
    assert error.limit == "ttft" and 1.5 <= elapsed < 2.5, (error.as_dict(), elapsed)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_that_goes_silent_midway_is_cut_within_1_s_of_idle_with_its_partial_text(fake, provider):
    fake.queue({"fail": "stall", "reply": LONG_REPLY})
    seen = []
    error, elapsed = timed(req(fake, provider, timeout_s=20, ttft_s=5, idle_s=1.5), seen)
    assert error.kind == "timeout" and error.limit == "idle" and error.retryable, error.as_dict()
    assert 1.5 <= elapsed < 2.5, elapsed
    assert "the stream was silent for 1.5 s" in error.message
    assert error.partial_text == "".join(seen) and error.partial_text.startswith("word0 word1")
    assert "word59" not in error.partial_text
    # the cut socket is not handed to the next call
    assert llm_call(req(fake, provider, timeout_s=5)).text.startswith("(Scripted demo reply")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_trickling_stream_is_cut_at_its_total(fake, provider):
    # a token every 0.3 s: inside the TTFT and idle limits, forever past the total
    fake.queue({"reply": LONG_REPLY, "chunk_delay_s": 0.3})
    seen = []
    error, elapsed = timed(req(fake, provider, timeout_s=2.5, ttft_s=1.5, idle_s=1.5), seen)
    assert error.kind == "timeout" and error.limit == "total", error.as_dict()
    assert 2.5 <= elapsed < 3.5, elapsed
    assert "ran past its 2.5 s total" in error.message
    assert error.partial_text == "".join(seen) and error.partial_text.startswith("word0")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_slow_but_steady_stream_inside_every_limit_is_not_cut(fake, provider):
    # 0.8 s to the first token and a token every 0.2 s for ~3 s: longer than the TTFT and idle limits
    # added up, shorter than each of them where it applies
    fake.queue({"reply": " ".join(f"w{i}" for i in range(14)), "ttft_s": 0.8, "chunk_delay_s": 0.2})
    seen = []
    started = time.monotonic()
    result = llm_call(req(fake, provider, timeout_s=10, ttft_s=1.5, idle_s=1.0), seen.append)
    assert time.monotonic() - started > 2.0  # it really was slower than the TTFT and idle limits
    assert result.text == "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13" and "".join(seen) == result.text


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_pause_mid_stream_longer_than_ttft_but_inside_idle_is_not_cut(fake, provider):
    # the header phase's read timeout (min(ttft, total) = 1 s) must not bound the gaps of the body
    fake.queue({"reply": "one two three four five six", "pause_s": 2.0})
    result = llm_call(req(fake, provider, timeout_s=10, ttft_s=1.0, idle_s=3.0))
    assert result.text == "one two three four five six"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_tool_call_delta_is_a_first_token(fake, provider):
    # a tool-only reply whose arguments trickle in: no text ever, yet the TTFT limit is met
    args = {"feature": "income " * 8, "depth": 2}
    fake.queue({"tool_calls": [{"name": "lookup_feature", "arguments": args}], "chunk_delay_s": 0.15})
    result = llm_call(req(fake, provider, tools=[LOOKUP], timeout_s=10, ttft_s=1.0, idle_s=1.0))
    assert result.text == "" and result.tool_calls[0]["arguments"] == args


def test_one_watchdog_thread_watches_every_call(fake):
    fake.set_behaviour(latency_s=0.5)
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda i: llm_call(req(fake, "openai", text=f"q{i}", timeout_s=10, idle_s=5)), range(20)))
    assert all(r.text for r in results)
    assert [t.name for t in threading.enumerate()].count("llm-watchdog") == 1
    assert not providers._watchdog._calls  # every call left the watch list


# ---------------------------------------------------------------- how structured output is asked for


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("structured", ["json_object", "instructions"])
def test_structured_output_without_a_schema_enforcing_server(fake, provider, structured):
    scripted = {"understands": True, "confidence": 0.7, "next_act": "example", "misconceptions": []}
    fake.queue({"json": scripted})
    result = llm_call(req(fake, provider, response_schema=LEARNER, structured=structured))
    assert result.parsed == scripted and result.tool_calls == []
    body = fake.requests()[-1]["body"]
    instruction = providers._schema_instruction(LEARNER)
    assert '"next_act":{"enum":["explain","ask","example"]}' in instruction
    if provider == "openai":
        system = body["messages"][0]
        assert system["role"] == "system" and system["content"] == "You explain a loan model.\n\n" + instruction
        if structured == "json_object":
            assert body["response_format"] == {"type": "json_object"}
        else:
            assert "response_format" not in body
    else:
        assert body["system"] == "You explain a loan model.\n\n" + instruction
        assert "tool_choice" not in body and "tools" not in body  # no forced tool


def test_the_schema_instruction_gets_a_system_message_of_its_own_when_there_is_none(fake):
    fake.queue({"json": {"understands": False, "confidence": 0.5, "next_act": "ask", "misconceptions": []}})
    messages = [{"role": "user", "content": "Hello"}]
    llm_call(req(fake, "openai", messages=messages, response_schema=LEARNER, structured="instructions"))
    sent = fake.requests()[-1]["body"]["messages"]
    assert sent == [{"role": "system", "content": providers._schema_instruction(LEARNER)}, messages[0]]
    assert messages == [{"role": "user", "content": "Hello"}]  # the caller's list is left alone


def test_an_unknown_structured_mode_is_a_final_bad_request(fake):
    error = expect_error(req(fake, "openai", response_schema=LEARNER, structured="xml"), "bad_request")
    assert not error.retryable and not fake.requests()


def test_anthropic_gets_the_study_files_tool_choice_in_its_own_words(fake):
    llm_call(req(fake, "anthropic", tools=[LOOKUP], params={"tool_choice": "required"}))
    assert fake.requests()[-1]["body"]["tool_choice"] == {"type": "any"}
    llm_call(req(fake, "anthropic", tools=[LOOKUP], response_schema=LEARNER, params={"tool_choice": "auto"}))
    assert fake.requests()[-1]["body"]["tool_choice"] == {"type": "tool", "name": "learner_model"}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("fail", ["drop", "truncate", "no_done"])
def test_dropped_stream(fake, provider, fail):
    fake.queue({"fail": fail})
    seen = []
    with pytest.raises(ProviderError) as info:
        llm_call(req(fake, provider), seen.append)
    error = info.value
    assert error.kind == "dropped" and error.retryable, error.as_dict()
    assert error.partial_text and error.partial_text == "".join(seen)
    assert error.partial_text.startswith("(Scripted demo reply")


@pytest.mark.parametrize("provider,kind", [("openai", "server"), ("anthropic", "overloaded")])
def test_error_event_mid_stream(fake, provider, kind):
    fake.queue({"fail": "stream_error"})
    error = expect_error(req(fake, provider), kind)
    assert error.retryable and error.partial_text


def test_connection_refused(fake):
    request = LLMRequest(provider="openai", model="m", messages=[{"role": "user", "content": "x"}],
                         base_url="http://127.0.0.1:9/v1", timeout_s=2)
    error = expect_error(request, "connection", within=3)
    assert error.retryable


def test_clients_are_shared_per_provider_url_and_key(fake):
    base, key = fake.openai_base_url, "not-needed"
    seen = []

    def get():
        seen.append(providers._client("openai", base, key))

    threads = [threading.Thread(target=get) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 1
    assert seen[0].max_retries == 0
    assert providers._client("anthropic", fake.anthropic_base_url, key) is not seen[0]


def test_estimate_tokens():
    assert estimate_tokens([{"role": "user", "content": "x" * 400}]) == 104
    assert estimate_tokens([]) == 0


def test_300_concurrent_streams(fake):
    # 2 s per call: long enough that, even on a busy 2-core machine, most calls overlap; a client pool or a
    # lock that serialised them would keep the count near its own size.
    fake.set_behaviour(latency_s=2.0, reply="The model weighs income and debt most heavily in this decision.")

    def one(i):
        request = req(fake, "openai", text=f"Question {i}", timeout_s=20)
        return llm_call(request, lambda _delta: None)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=300) as pool:
        results = list(pool.map(one, range(300)))
    wall = time.monotonic() - started
    stats = fake.stats()
    print(f"\n300 concurrent streaming calls against a 2 s fake: {wall:.2f} s wall, "
          f"server max in flight {stats['max_in_flight']}")
    assert all(r.finish_reason == "stop" and r.text.startswith("The model weighs") for r in results)
    assert stats["by_status"] == {"200": 300}
    assert wall < 8.0  # serialised, they would take 600 s
    assert stats["max_in_flight"] >= 150


def test_targeted_failure_among_concurrent_calls(fake):
    fake.match("turn 7 of participant B", {"fail": "500"}, times=1)

    def one(text):
        try:
            return llm_call(req(fake, "anthropic", text=text)).text
        except ProviderError as error:
            return error.kind

    texts = [f"turn {i} of participant {p}" for i in range(10) for p in "AB"]
    with ThreadPoolExecutor(max_workers=20) as pool:
        outcome = dict(zip(texts, pool.map(one, texts)))
    assert outcome.pop("turn 7 of participant B") == "server"
    assert all(v.startswith("(Scripted demo reply") for v in outcome.values())
