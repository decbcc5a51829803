"""The fake LLM server: wire formats, behaviour control, recording (raw HTTP, no SDK)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from explainers.fakellm import FakeLLM, default_reply, fakellm_start, fakellm_stop, schema_instance

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    with FakeLLM(tmp_path_factory.mktemp("fakellm")) as server:
        yield server


@pytest.fixture
def http(fake):
    fake.reset()
    with httpx2.Client(base_url=fake.url, timeout=10, trust_env=False) as client:
        yield client


def sse(text):
    """[(event, data)] from an SSE body."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((event, "\n".join(data)))
    return out


def chat(http, **body):
    body.setdefault("model", "fake-model")
    body.setdefault("messages", [{"role": "user", "content": "What does the model use?"}])
    return http.post("/v1/chat/completions", json=body)


def test_models(http):
    data = http.get("/v1/models").json()
    assert data["object"] == "list" and "fake-model" in [m["id"] for m in data["data"]]


def test_openai_stream_format(http):
    response = chat(http, stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [data for _, data in sse(response.text)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(d) for d in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "fake-model" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == default_reply([{"role": "user", "content": "What does the model use?"}])
    assert text.startswith("(Scripted demo reply — no real language model is configured.) You asked: “What does the model use?”.")
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 10
    assert all(c["usage"] is None for c in chunks[:-1])


def test_openai_without_include_usage_has_no_usage(http):
    chunks = [json.loads(d) for _, d in sse(chat(http, stream=True).text)[:-1]]
    assert all("usage" not in c for c in chunks)


def test_openai_non_stream_and_tool_calls(http, fake):
    fake.queue({"tool_calls": [{"name": "f", "arguments": {"a": 1, "b": "long enough to split"}}]})
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = chat(http, tools=tools).json()
    message = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls" and body["usage"]["prompt_tokens"] > 0
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"a": 1, "b": "long enough to split"}
    # streamed: the arguments arrive in several pieces by index
    fake.queue({"tool_calls": [{"name": "f", "arguments": {"a": 1, "b": "long enough to split"}}]})
    chunks = [json.loads(d) for _, d in sse(chat(http, tools=tools, stream=True).text)[:-1]]
    deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas[0]["function"]["name"] == "f" and deltas[0]["id"].startswith("call_")
    assert len(deltas) > 3 and all(d["index"] == 0 for d in deltas)
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == {"a": 1, "b": "long enough to split"}


def test_openai_json_schema_generated(http):
    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 3, "maximum": 9}, "label": {"enum": ["low", "high"]}},
        "required": ["score", "label"],
    }
    body = chat(http, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}).json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"score": 3, "label": "low"}


def test_schema_instance():
    schema = {
        "type": "object",
        "$defs": {"item": {"type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": 1}}, "required": ["n"]}},
        "properties": {
            "flag": {"type": "boolean"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "string", "minLength": 2}]},
            "capped": {"type": "integer", "maximum": -5},
            "optional": {"type": "string"},
        },
        "required": ["flag", "items", "maybe", "capped"],
    }
    assert schema_instance(schema) == {"flag": False, "items": [{"n": 1.5}], "maybe": "xx", "capped": -5}


def test_a_plain_reply_is_in_chinese_when_the_arms_instructions_or_the_question_are(http):
    """The chat arm's instructions come in the page's language; the scripted reply follows them."""
    system = {"role": "system", "content": "你是一名解释贷款模型的助手。"}
    reply = chat(http, stream=False, messages=[system, {"role": "user", "content": "What does it use?"}]).json()
    text = reply["choices"][0]["message"]["content"]
    assert text.startswith("（脚本化的演示回复——没有配置真实的语言模型。）你问：“What does it use?”")
    asked = http.post("/v1/messages", json={"model": "fake-claude", "max_tokens": 100, "system": "Explain the model.",
                                            "messages": [{"role": "user", "content": "模型用什么？"}]}).json()
    assert asked["content"][0]["text"].startswith("（脚本化的演示回复") and "模型用什么？" in asked["content"][0]["text"]
    english = chat(http, stream=False, messages=[{"role": "system", "content": "Explain the model."},
                                                 {"role": "user", "content": "Why?"}]).json()
    assert english["choices"][0]["message"]["content"].startswith("(Scripted demo reply")


def test_anthropic_stream_events_and_tool_use(http, fake):
    body = {
        "model": "fake-claude", "max_tokens": 100, "stream": True,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
    }
    events = sse(http.post("/v1/messages", json=body).text)
    names = [e for e, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "content_block_delta", "content_block_stop", "ping"} <= set(names)
    text = "".join(json.loads(d)["delta"]["text"] for e, d in events if e == "content_block_delta")
    assert "You asked: “Hello there”" in text
    delta = json.loads(events[-2][1])
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] > 0
    # forced tool with a generated input
    tool = {"name": "answer", "input_schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}
    events = sse(http.post("/v1/messages", json={**body, "tools": [tool], "tool_choice": {"type": "tool", "name": "answer"}}).text)
    start = [json.loads(d) for e, d in events if e == "content_block_start"][0]
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["name"] == "answer"
    partial = "".join(json.loads(d)["delta"]["partial_json"] for e, d in events if e == "content_block_delta")
    assert json.loads(partial) == {"ok": False}
    # non-streamed
    fake.queue({"reply": "Exact words."})
    message = http.post("/v1/messages", json={**body, "stream": False}).json()
    assert message["content"] == [{"type": "text", "text": "Exact words."}] and message["stop_reason"] == "end_turn"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_failures_by_status(http, fake, path):
    fake.queue({"fail": "429", "retry_after_s": 2}, {"fail": "529"}, {"fail": "quota"}, {"fail": "context"}, {"fail": "401"})
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    r429, r529, quota, context, r401 = (http.post(path, json=body) for _ in range(5))
    assert r429.status_code == 429 and r429.headers["retry-after"] == "2"
    assert r529.status_code == 529 and r401.status_code == 401
    assert context.status_code == 400
    if path == "/v1/messages":
        assert r529.json()["error"]["type"] == "overloaded_error"
        assert quota.status_code == 400 and "credit balance" in quota.json()["error"]["message"]
        assert "prompt is too long" in context.json()["error"]["message"]
    else:
        assert quota.status_code == 429 and quota.json()["error"]["code"] == "insufficient_quota"
        assert context.json()["error"]["code"] == "context_length_exceeded"


def test_hang_and_drop(http, fake):
    fake.queue({"fail": "hang"}, {"fail": "drop"})
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(httpx2.ReadTimeout):
        http.post("/v1/chat/completions", json=body, timeout=httpx2.Timeout(5, read=0.5))
    with pytest.raises(httpx2.RemoteProtocolError):
        chat(http, stream=True)
    time.sleep(0.2)
    stats = fake.stats()
    assert stats["in_flight"] == 0  # the hung request ended when the client went away
    assert stats["by_status"].get("hang") == 1


def test_timing_ttft_and_latency(http, fake):
    fake.set_behaviour(ttft_s=0.3, latency_s=0.8, reply="one two three four")
    started = time.monotonic()
    seen = []
    with http.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                seen.append(time.monotonic() - started)
    total = time.monotonic() - started
    assert 0.28 < seen[0] < 0.6 and 0.75 < total < 1.3 and len(seen) == 4


def test_queue_match_and_failure_rate(http, fake):
    fake.queue({"reply": "first"}, {"reply": "second"})
    fake.match("target turn", {"reply": "matched"}, times=2)
    texts = []
    for content in ["a", "the target turn here", "b", "target turn again", "target turn thrice"]:
        body = chat(http, messages=[{"role": "user", "content": content}]).json()
        texts.append(body["choices"][0]["message"]["content"])
    assert texts[:4] == ["first", "matched", "second", "matched"]
    assert texts[4].startswith("(Scripted demo reply")
    fake.set_behaviour(failure_rate=0.5, failures=["500", "429"], seed=3)
    statuses = [chat(http).status_code for _ in range(40)]
    fake.set_behaviour(failure_rate=0.5, failures=["500", "429"], seed=3)
    assert statuses == [chat(http).status_code for _ in range(40)]  # seeded: reproducible
    assert 8 < statuses.count(200) < 32 and {500, 429} <= set(statuses)


def test_requests_recorded_without_keys(http, fake):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    http.post("/v1/chat/completions", json={"model": "m", "messages": messages}, headers={"Authorization": "Bearer sk-x"})
    http.post("/v1/messages", json={"model": "m", "max_tokens": 3, "messages": messages[1:]}, headers={"x-api-key": "sk-y"})
    first, second = fake.requests()
    assert first["body"]["messages"] == messages and first["status"] == 200 and first["received_at"] > 0
    assert first["behaviour"]["reply"] is None and first["has_key"] and second["has_key"]
    assert "sk-x" not in json.dumps(first) and "sk-y" not in json.dumps(second)
    assert fake.stats()["total"] == 2
    fake.reset()
    assert fake.requests() == [] and fake.stats()["total"] == 0


def test_cli_port_file_and_helpers(tmp_path):
    process, url = fakellm_start(tmp_path)
    try:
        assert httpx2.get(url + "/v1/models", trust_env=False).status_code == 200
    finally:
        fakellm_stop(process)
    assert process.returncode is not None
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "explainers.fakellm", "--port", "0", "--port-file", str(port_file)], cwd=ROOT)
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        port = int(port_file.read_text())
        assert httpx2.get(f"http://127.0.0.1:{port}/_control/stats", trust_env=False).json()["total"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_600_concurrent_streams(fake):
    """The fake holds 600 streaming connections at once on one asyncio process.

    The client is raw asyncio sockets: httpx's own async pool, not the server, is the bottleneck
    at this many connections (about 12 s for 600 where the server itself needs 1.6 s)."""
    import asyncio

    fake.reset()
    fake.set_behaviour(latency_s=1.5, reply="a b c d e")

    async def one(i):
        reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
        body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": str(i)}]}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        writer.write(head + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), 20)
        writer.close()
        return b"data: [DONE]" in data and data.startswith(b"HTTP/1.1 200")

    async def run():
        return await asyncio.gather(*(one(i) for i in range(600)))

    started = time.monotonic()
    ok = asyncio.run(run())
    wall = time.monotonic() - started
    stats = fake.stats()
    print(f"\n600 concurrent raw streams against a 1.5 s fake: {wall:.2f} s wall, max in flight {stats['max_in_flight']}")
    assert all(ok) and stats["max_in_flight"] >= 550 and stats["by_status"] == {"200": 600}
    assert wall < 4
