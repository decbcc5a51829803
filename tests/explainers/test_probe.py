"""The endpoint probe: what an arm's endpoint does, found through the production call path, against the fake
server set up to behave like the servers the field notes met."""
import socket

import pytest

from explainers.probe import CONTEXT_PROBE_TOKENS, endpoint_probe, recommendations


def chat_arm(fake, provider="openai", **llm) -> dict:
    base_url = fake.openai_base_url if provider == "openai" else fake.anthropic_base_url
    return {"id": "chat", "kind": "chat",
            "llm": {"provider": provider, "model": "fake-model", "base_url": base_url, "params": {},
                    "timeout_s": 10, **llm}}


ADD = {"name": "add", "arguments": {"a": 17, "b": 25}}


def test_a_server_that_does_everything_gets_auto_tools_and_json_schema(fake_llm):
    fake_llm.set_behaviour(tool_calls=[ADD], context_window=32768, report_context=True)
    report = endpoint_probe(arm=chat_arm(fake_llm))
    assert report["reachable"] and report["streaming"] and report["usage"], report
    assert report["tools_auto"] is True and report["tools_required"] is True
    assert report["json_schema"] is True and report["json_object"] is True
    assert report["context_window"] == {"tokens": 32768, "source": "models.max_model_len"}
    assert report["ttft_ms"] is not None and not report["scripted"] and report["errors"] == {}
    assert report["recommended"] == {"tool_choice": "auto", "structured_output": "json_schema"}


def test_a_llamacpp_like_server_gets_required_tools_and_a_probed_small_window(fake_llm):
    # tool calls only when required, json_object not enforced, a 4,096-token window it does not report
    fake_llm.set_behaviour(ignore_json_object=True, context_window=4096)
    report = endpoint_probe(arm=chat_arm(fake_llm))
    assert report["reachable"] and report["streaming"]
    assert report["tools_auto"] is False and report["tools_required"] is True
    assert report["json_schema"] is True and report["json_object"] is False
    assert report["context_window"] == {"tokens": None, "below": CONTEXT_PROBE_TOKENS, "source": "probe"}
    assert report["errors"]["context"].startswith("context_overflow")  # kept in the report, not raised
    assert report["recommended"] == {"tool_choice": "required", "structured_output": "json_schema"}
    sent = [r["body"].get("tool_choice") for r in fake_llm.requests() if r["body"].get("tools")]
    assert sent == ["auto", "required"]  # the probe sent each tool choice explicitly


def test_a_server_that_writes_tool_calls_as_text_gets_no_tools(fake_llm):
    fake_llm.set_behaviour(ignore_tools=True, usage=False)
    report = endpoint_probe(arm=chat_arm(fake_llm))
    assert report["reachable"] and report["streaming"] and report["usage"] is False
    assert report["tools_auto"] is False and report["tools_required"] is False
    assert report["context_window"]["at_least"] == CONTEXT_PROBE_TOKENS
    assert report["recommended"]["tool_choice"] == "none"


def test_recommendations_fall_back_to_json_object_then_instructions():
    assert recommendations({"json_schema": False, "json_object": True})["structured_output"] == "json_object"
    assert recommendations({"tools_auto": False, "tools_required": False, "json_schema": False,
                            "json_object": None}) == {"tool_choice": "none", "structured_output": "instructions"}
    assert recommendations({}) == {"tool_choice": None, "structured_output": None}  # nothing measured


def test_the_probe_uses_the_arms_own_model_and_params(fake_llm):
    endpoint_probe(arm=chat_arm(fake_llm, model="fake-small", params={"temperature": 0.3, "frequency_penalty": 0.5}))
    bodies = [r["body"] for r in fake_llm.requests() if r["path"].endswith("/chat/completions")]
    assert bodies and all(b["model"] == "fake-small" and b["temperature"] == 0.3 and b["frequency_penalty"] == 0.5
                          and b["stream"] is True and b["max_tokens"] <= 80 for b in bodies)


def test_the_scripted_demo_model_is_probed_and_reported_as_scripted(fake_llm):
    arm = {"id": "agentic", "kind": "agentic", "llm": {"provider": "openai", "model": "gpt-4o-mini", "params": {}}}
    report = endpoint_probe(arm=arm)  # no base_url: the fake_llm fixture makes it the scripted model
    assert report["endpoint"] and report["scripted"] and report["reachable"] and report["streaming"]
    assert report["base_url"] == fake_llm.openai_base_url


def test_anthropic_structured_output_goes_through_a_forced_tool_and_has_no_json_mode(fake_llm):
    report = endpoint_probe(arm=chat_arm(fake_llm, provider="anthropic", model="fake-claude"))
    assert report["reachable"] and report["streaming"] and report["json_schema"] is True
    assert report["json_object"] is None and report["recommended"]["structured_output"] == "json_schema"


def test_an_arm_without_an_endpoint_is_reported_not_raised(settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""
    report = endpoint_probe(arm={"id": "chat", "kind": "chat", "llm": {"provider": "openai", "model": "m"}})
    assert report["endpoint"] is False and report["reachable"] is False
    assert "no language model" in report["errors"]["endpoint"]


def test_an_unreachable_endpoint_is_reported_and_the_rest_skipped(fake_llm):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    arm = {"id": "chat", "kind": "chat",
           "llm": {"provider": "openai", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1", "params": {}}}
    report = endpoint_probe(arm=arm)
    assert report["reachable"] is False and report["streaming"] is False
    assert report["errors"]["stream"].startswith("connection")
    assert report["errors"]["tools_auto"].startswith("skipped") and report["tools_auto"] is None


def test_a_hanging_endpoint_ends_within_the_arms_timeout_not_the_servers(fake_llm):
    fake_llm.set_behaviour(fail="hang")
    report = endpoint_probe(arm=chat_arm(fake_llm, timeout_s=2))
    assert report["errors"]["stream"].startswith("timeout") and report["streaming"] is False
    assert report["errors"]["json_schema"].startswith("skipped")
    assert report["recommended"] == {"tool_choice": None, "structured_output": None}  # unknown, not "none"
    # one hung call, cut at the arm's timeout; the other five probes are not made
    assert len([r for r in fake_llm.requests() if r.get("body", {}).get("messages")]) == 1


@pytest.mark.parametrize("budget_s", [0.5])
def test_a_used_up_budget_skips_calls_instead_of_running_past_it(fake_llm, budget_s):
    report = endpoint_probe(arm=chat_arm(fake_llm), budget_s=budget_s)
    assert report["errors"]["stream"].startswith("skipped") and report["streaming"] is False
