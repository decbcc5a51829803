"""The chat of the explanation step through Django's test client.

No worker runs here: where a test needs a reply it calls `explainers.services.reply_generate` in-process,
which asks the fake server exactly as the worker would. The worker, its retries and the live stream are
covered by the worker and browser tests.
"""
import json
import re
import warnings
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.test import Client

from conftest import chat_only
from explainers import services as explainer_services
from explainers.models import Conversation, LLMCall, Turn
from participants.models import Participant, Step

PID = "PID0000000000000000000001"
# A distinctive sentence of the chat arm's system prompt in the example study (one line in study.yaml).
SYSTEM_SENTENCE = "Answer their questions truthfully, briefly and plainly."
ARM_LABEL = "Chat (answers questions)"
PRICES = {"input_per_mtok": Decimal("0.15"), "output_per_mtok": Decimal("0.60")}

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _in_process_replies(in_process):
    """Replies run inside the test's transaction (conftest's `in_process`)."""


def _edit(**limits):
    def edit(data):
        chat_only(data)
        data["arms"][0]["limits"].update(limits)

    return edit


@pytest.fixture
def chat_client(launch, fake_llm, enter, step_through):
    """Return a function: launch the chat-only study (with `limits` overrides), enter and reach the chat."""

    def make(pid=PID, **limits):
        version = launch(_edit(**limits))
        client, _ = enter(version, pid=pid)
        step_through(client, version, times=1 + 5)  # consent and the pre-test
        participant = Participant.objects.get(token=_token(client, version))
        assert participant.step == Step.EXPLANATION and participant.arm == "chat"
        return version, client, participant

    return make


def _token(client: Client, version) -> str:
    return client.session[f"teachback:participant:{version.study.slug}"]


def _urls(version):
    slug = version.study.slug
    return {
        "page": f"/s/{slug}/explanation/",
        "send": f"/s/{slug}/chat/send/",
        "events": lambda turn: f"/s/{slug}/chat/events/{turn}/",
        "retry": lambda turn: f"/s/{slug}/chat/retry/{turn}/",
    }


def _send(client, version, text, nonce=""):
    return client.post(_urls(version)["send"], {"text": text, "nonce": nonce})


def _answer(turn_id: int) -> None:
    outcome = explainer_services.reply_generate(turn_id=turn_id)
    assert outcome.state == "answered", outcome


def _events(client, version, turn_id) -> str:
    response = client.get(_urls(version)["events"](turn_id))
    with warnings.catch_warnings():  # the test client is WSGI-like: it gathers the async stream at once
        warnings.filterwarnings("ignore", "StreamingHttpResponse must consume asynchronous iterators")
        body = b"".join(response).decode()
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache"
    return body


def _parse_events(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if not lines:
            continue
        kind = next(line[len("event: "):] for line in lines if line.startswith("event: "))
        data = json.loads(next(line[len("data: "):] for line in lines if line.startswith("data: ")))
        events.append((kind, data))
    return events


def _chat_section(html: str) -> str:
    match = re.search(r"<section class=\"chat\" data-chat.*?</section>", html, re.S)
    assert match, "no chat on the page"
    return match.group(0)


def _attr(html: str, name: str) -> str | None:
    match = re.search(rf'\s{name}="([^"]*)"', html)
    return match.group(1) if match else None


# --- sending ---------------------------------------------------------------------------------------


def test_sending_saves_the_turn_and_answers_202_before_any_reply(chat_client, fake_llm):
    version, client, participant = chat_client()
    response = _send(client, version, "How does the model decide?", nonce="n1")
    assert response.status_code == 202
    body = response.json()
    turn = Turn.objects.get(pk=body["turn"])
    assert body["status"] == "pending" == turn.status
    assert turn.author == Turn.Author.PARTICIPANT and turn.text == "How does the model decide?"
    assert turn.conversation_id == Participant.objects.get(pk=participant.pk).conversation_id
    assert not Turn.objects.filter(author=Turn.Author.EXPLAINER).exists()
    assert fake_llm.requests() == []  # the view queues the reply; it never calls the provider itself
    assert not LLMCall.objects.exists()


def test_a_double_send_makes_one_turn_and_a_second_message_waits(chat_client):
    version, client, _ = chat_client()
    first = _send(client, version, "Hello?", nonce="same-nonce")
    again = _send(client, version, "Hello?", nonce="same-nonce")
    assert first.status_code == again.status_code == 202
    assert first.json()["turn"] == again.json()["turn"]
    assert Turn.objects.filter(author=Turn.Author.PARTICIPANT).count() == 1

    busy = _send(client, version, "Anyone there?", nonce="other-nonce")
    assert busy.status_code == 409 and busy.json()["error"] == "busy"
    assert busy.json()["message"]
    assert Turn.objects.filter(author=Turn.Author.PARTICIPANT).count() == 1

    _answer(first.json()["turn"])
    assert _send(client, version, "Anyone there?", nonce="other-nonce").status_code == 202


def test_a_message_over_the_limit_is_refused_with_413_and_not_saved(chat_client):
    version, client, _ = chat_client()
    response = _send(client, version, "x" * (django_settings.CHAT_MESSAGE_MAX_CHARS + 1), nonce="n")
    assert response.status_code == 413
    data = response.json()
    assert data["error"] == "too_long"
    assert str(django_settings.CHAT_MESSAGE_MAX_CHARS) in data["message"] and "too long" in data["message"]
    assert not Turn.objects.exists()
    assert _send(client, version, "x" * django_settings.CHAT_MESSAGE_MAX_CHARS, nonce="m").status_code == 202


# --- limits ----------------------------------------------------------------------------------------


def test_the_turn_limit_refuses_the_third_message_and_ends_the_chat_on_the_page(chat_client):
    version, client, _ = chat_client(turns=2)
    urls = _urls(version)
    section = _chat_section(client.get(urls["page"]).content.decode())
    assert _attr(section, "data-turns-left") == "2" and _attr(section, "data-ended") == ""

    for n in (1, 2):
        turn = _send(client, version, f"Question {n}?", nonce=f"n{n}").json()["turn"]
        _answer(turn)
        if n == 1:
            section = _chat_section(client.get(urls["page"]).content.decode())
            assert _attr(section, "data-turns-left") == "1"

    refused = _send(client, version, "Question 3?", nonce="n3")
    assert refused.status_code == 409 and refused.json()["error"] == "limit"
    assert "used all the messages" in refused.json()["message"]
    assert Turn.objects.filter(author=Turn.Author.PARTICIPANT).count() == 2

    html = client.get(urls["page"]).content.decode()
    section = _chat_section(html)
    assert _attr(section, "data-turns-left") == "0" and _attr(section, "data-ended") == "1"
    error = re.search(r"<p class=\"error\" data-chat-error[^>]*>(.*?)</p>", section, re.S)
    assert error and "hidden" not in error.group(0).split(">")[0]
    assert "used all the messages" in error.group(1)
    assert re.search(r"<textarea[^>]*\sdisabled", section), "the message box is not disabled"
    assert re.search(r"<button[^>]*data-chat-send[^>]*\sdisabled|<button[^>]*\sdisabled[^>]*data-chat-send", section)
    assert Conversation.objects.get().end_reason == Conversation.EndReason.TURNS


def test_the_time_limit_refuses_sending(chat_client):
    version, client, participant = chat_client(minutes=15)
    assert _send(client, version, "First?", nonce="a").status_code == 202
    _answer(Turn.objects.get().pk)
    conversation = Participant.objects.get(pk=participant.pk).conversation
    section = _chat_section(client.get(_urls(version)["page"]).content.decode())
    assert 14 * 60 <= int(_attr(section, "data-seconds-left")) <= 15 * 60

    Conversation.objects.filter(pk=conversation.pk).update(started_at=conversation.started_at - timedelta(minutes=16))
    refused = _send(client, version, "Still there?", nonce="b")
    assert refused.status_code == 409 and refused.json()["error"] == "limit"
    assert "time for this conversation is over" in refused.json()["message"]
    assert Turn.objects.filter(author=Turn.Author.PARTICIPANT).count() == 1
    assert Conversation.objects.get(pk=conversation.pk).end_reason == Conversation.EndReason.MINUTES  # stored
    section = _chat_section(client.get(_urls(version)["page"]).content.decode())
    assert _attr(section, "data-seconds-left") == "0" and _attr(section, "data-ended") == "1"


def test_after_a_limit_ends_the_chat_continue_works_despite_min_seconds(chat_client):
    version, client, participant = chat_client(turns=1, min_seconds=600)
    urls = _urls(version)
    assert client.get(urls["page"]).status_code == 200  # the page is shown: its minimum time starts
    assert client.post(urls["page"]).status_code == 400  # the minimum time holds while the chat is open
    _answer(_send(client, version, "One question?", nonce="x").json()["turn"])
    assert Conversation.objects.get().ended_at is not None
    html = client.get(urls["page"]).content.decode()
    assert 'data-wait="0"' in html
    response = client.post(urls["page"])
    assert response.status_code == 303
    assert Participant.objects.get(pk=participant.pk).step == Step.POST_TEST


# --- the transcript ----------------------------------------------------------------------------------


def test_the_transcript_is_rendered_from_the_database_as_sanitised_markdown(chat_client, fake_llm):
    fake_llm.set_behaviour(reply="<script>alert(1)</script> **bold** [x](javascript:alert(1)) <img src=x onerror=alert(1)>")
    version, client, _ = chat_client()
    turn = _send(client, version, "Show me <b>html</b>", nonce="n").json()["turn"]
    _answer(turn)
    section = _chat_section(client.get(_urls(version)["page"]).content.decode())
    items = re.findall(r"<li class=\"turn (\w+)\" data-turn=\"(\d+)\" data-status=\"(\w+)\">(.*?)</li>\s*(?=<li|</ol>)", section, re.S)
    assert [(author, status) for author, _id, status, _html in items] == [("participant", "answered"), ("explainer", "complete")]
    assert int(items[0][1]) == turn
    assert "&lt;b&gt;html&lt;/b&gt;" in items[0][3]  # the participant's text is escaped
    reply = items[1][3]
    assert "<strong>bold</strong>" in reply
    lowered = section.lower()
    assert "<script" not in lowered
    assert 'href="javascript' not in lowered
    assert not re.search(r"<a [^>]*href=\"javascript", lowered)
    assert not re.search(r"<[a-z]+[^>]*\sonerror=", lowered)
    assert "<img" not in reply

    done = _parse_events(_events(client, version, turn))
    assert [kind for kind, _ in done] == ["done"]
    assert "<strong>bold</strong>" in done[0][1]["html"]
    live = done[0][1]["html"].lower()
    assert "<script" not in live and "<img" not in live and 'href="javascript' not in live
    assert not re.search(r"<[a-z]+[^>]*\sonerror=", live)  # the text "onerror=" may show, escaped, as text


def test_the_events_of_an_answered_turn_are_one_done_event_and_another_participants_turn_is_404(
    chat_client, fake_llm
):
    fake_llm.set_behaviour(reply="Income matters **most**.")
    version, client, _ = chat_client()
    turn = _send(client, version, "What matters?", nonce="n").json()["turn"]
    _answer(turn)
    body = _events(client, version, turn)
    events = _parse_events(body)
    assert len(events) == 1 and events[0][0] == "done"
    assert events[0][1]["html"].strip() == "<p>Income matters <strong>most</strong>.</p>"
    assert events[0][1]["usage"]["ended"] is False and events[0][1]["usage"]["turns_left"] == 19
    assert body.endswith("\n\n")

    assert Client().get(_urls(version)["events"](turn)).status_code == 404  # no session at all
    same_study = Client()  # a second participant of the same study
    same_study.get(f"/s/{version.study.slug}/", {"PROLIFIC_PID": "0000000000000000000000f3", "STUDY_ID": "S1", "SESSION_ID": "S"})
    assert same_study.get(_urls(version)["events"](turn)).status_code == 404
    assert client.get(_urls(version)["events"](turn + 1)).status_code == 404  # the explainer's turn is not followable


# --- what never leaves the server -------------------------------------------------------------------


def test_the_system_prompt_and_the_arm_never_reach_the_browser(chat_client, fake_llm, step_through):
    version, client, participant = chat_client()
    urls = _urls(version)
    bodies = []
    # The pages up to the chat (visited again: the server shows the current step), the chat itself.
    bodies.append(client.get(f"/s/{version.study.slug}/", follow=True).content.decode())
    bodies.append(client.get(urls["page"]).content.decode())

    fake_llm.queue({"fail": "401"})  # the first attempt fails for good: the participant may send it again
    sent = _send(client, version, "Tell me about the tree.", nonce="n")
    bodies.append(sent.content.decode())
    turn = sent.json()["turn"]
    assert explainer_services.reply_generate(turn_id=turn).state == "failed"
    bodies.append(_events(client, version, turn))
    bodies.append(client.get(urls["page"]).content.decode())
    retried = client.post(urls["retry"](turn))
    assert retried.status_code == 202
    bodies.append(retried.content.decode())
    _answer(turn)
    bodies.append(_events(client, version, turn))
    refused = _send(client, version, "x" * (django_settings.CHAT_MESSAGE_MAX_CHARS + 1))
    bodies.append(refused.content.decode())
    bodies.append(client.get(urls["page"]).content.decode())

    # The rest of the study, page by page.
    assert client.post(urls["page"]).status_code == 303
    for _ in range(5 + 3):
        bodies.append(client.get(f"/s/{version.study.slug}/", follow=True).content.decode())
        step_through(client, version)
    bodies.append(client.get(f"/s/{version.study.slug}/", follow=True).content.decode())  # the debrief
    assert Participant.objects.get(pk=participant.pk).step == Step.DEBRIEF
    bodies.append(client.post(f"/s/{version.study.slug}/debrief/").content.decode())
    bodies.append(client.get(f"/s/{version.study.slug}/", follow=True).content.decode())

    system_prompt = version.spec["arms"][0]["system_prompt"]["en"]
    assert SYSTEM_SENTENCE in system_prompt and ARM_LABEL == version.spec["arms"][0]["label"]["en"]
    for body in bodies:
        assert SYSTEM_SENTENCE not in body
        assert "truthfully" not in body
        assert ARM_LABEL not in body and "对话（回答提问）" not in body
        assert "data-arm" not in body
        assert not re.search(r"data-[\w-]+=\"chat\"", body), re.search(r"data-[\w-]+=\"chat\"", body)
        assert '"arm"' not in body and "system_prompt" not in body and "gpt-4o-mini" not in body
    # The provider did get the system prompt: it is the model's instructions, not the browser's.
    assert SYSTEM_SENTENCE in fake_llm.requests()[-1]["body"]["messages"][0]["content"]


def test_no_prolific_id_and_no_participant_token_go_to_the_provider(chat_client, fake_llm):
    version, client, participant = chat_client()
    _answer(_send(client, version, f"My id is secret; what is {version.study.slug}?", nonce="n").json()["turn"])
    _answer(_send(client, version, "And the income threshold?", nonce="m").json()["turn"])
    participant.refresh_from_db()
    requests = fake_llm.requests()
    assert len(requests) == 2
    for request in requests:
        dumped = json.dumps(request["body"]) + json.dumps(request["headers"]) + request["path"]
        for secret in (PID, participant.token, participant.pid_hash, str(participant.pk) + "@"):
            assert secret not in dumped
        assert "user" not in request["body"]  # no end-user id field either
        assert not any(key.lower() in ("x-participant", "x-user") for key in request["headers"])
    for call in LLMCall.objects.all():
        assert PID not in json.dumps(call.request) and participant.token not in json.dumps(call.request)


# --- the scripted demo model, said plainly ------------------------------------------------------------


def test_the_scripted_demo_model_is_said_plainly_and_recorded(chat_client):
    version, client, participant = chat_client()
    html = client.get(_urls(version)["page"]).content.decode()
    assert "data-scripted" in _chat_section(html)
    assert "scripted demo model" in html
    _answer(_send(client, version, "Hi", nonce="n").json()["turn"])
    assert Conversation.objects.get().scripted is True
    assert Turn.objects.get(author=Turn.Author.EXPLAINER).scripted is True
    assert Turn.objects.get(author=Turn.Author.PARTICIPANT).scripted is False
    assert LLMCall.objects.get().scripted is True


def test_a_configured_endpoint_is_not_called_scripted(chat_client, fake_llm, settings):
    settings.LLM_BASE_URL = fake_llm.openai_base_url  # a "real" configured OpenAI-compatible endpoint
    version, client, participant = chat_client()
    html = client.get(_urls(version)["page"]).content.decode()
    assert "data-scripted" not in html and "scripted demo model" not in html
    _answer(_send(client, version, "Hi", nonce="n").json()["turn"])
    assert Conversation.objects.get().scripted is False
    assert Turn.objects.get(author=Turn.Author.EXPLAINER).scripted is False
    assert LLMCall.objects.get().scripted is False
    assert LLMCall.objects.get().request["base_url"] == fake_llm.openai_base_url


# --- the log of every call --------------------------------------------------------------------------


def test_every_llm_call_is_logged_in_full_with_its_cost(chat_client, fake_llm):
    fake_llm.set_behaviour(reply="The tree looks at income first, then debt.", ttft_s=0.05, latency_s=0.2)
    version, client, participant = chat_client()
    turn = _send(client, version, "What does the tree look at first?", nonce="n").json()["turn"]
    _answer(turn)
    call = LLMCall.objects.get()
    arm = version.spec["arms"][0]
    assert call.turn_id == turn and call.purpose == "reply" and call.attempt == 1
    assert call.status == LLMCall.Status.OK and call.provider == "openai"
    assert call.model == "gpt-4o-mini" and call.model_reported
    assert call.request["model"] == "gpt-4o-mini"
    assert call.request["params"] == {"temperature": 0.3, "max_tokens": 500} == dict(arm["llm"]["params"])
    messages = call.request["messages"]
    assert messages[0]["role"] == "system" and SYSTEM_SENTENCE in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "What does the tree look at first?"}
    assert call.response is not None and call.response != {}
    assert "income first" in json.dumps(call.response)
    assert call.latency_ms is not None and call.latency_ms >= 150
    assert call.ttft_ms is not None and 0 < call.ttft_ms <= call.latency_ms
    assert call.input_tokens and call.input_tokens > 0 and call.output_tokens and call.output_tokens > 0
    assert call.version_sha256 == version.sha256
    expected = (call.input_tokens * PRICES["input_per_mtok"] + call.output_tokens * PRICES["output_per_mtok"]) / Decimal(1_000_000)
    assert Decimal(str(arm["llm"]["prices"]["input_per_mtok"])) == PRICES["input_per_mtok"]
    assert Decimal(str(arm["llm"]["prices"]["output_per_mtok"])) == PRICES["output_per_mtok"]
    assert call.cost_usd == expected.quantize(Decimal("0.000001"))
    assert abs(call.cost_usd - expected) < Decimal("0.0000005")
    reply = Turn.objects.get(author=Turn.Author.EXPLAINER)
    assert reply.text == "The tree looks at income first, then debt." and reply.reply_to_id == turn
    assert reply.first_token_at is not None and reply.completed_at is not None

    # A failed attempt is logged as well, with its own attempt number.
    fake_llm.queue({"fail": "500"})
    second = _send(client, version, "And then?", nonce="m").json()["turn"]
    assert explainer_services.reply_generate(turn_id=second).state == "retry"
    Turn.objects.filter(pk=second).update(not_before=None)
    _answer(second)
    calls = list(LLMCall.objects.filter(turn_id=second).order_by("attempt"))
    assert [(c.attempt, c.status) for c in calls] == [(1, "error"), (2, "ok")]
    assert calls[0].error_kind and calls[0].http_status == 500 and calls[0].request["messages"]


def test_the_end_of_chat_message_in_the_stream_is_in_the_participants_language(chat_client):
    version, client, participant = chat_client(turns=1)
    client.get(_urls(version)["page"], {"lang": "zh-hans"})  # the participant switches to Chinese
    assert Participant.objects.get(pk=participant.pk).language == "zh-hans"
    turn = _send(client, version, "问题？", nonce="n").json()["turn"]
    _answer(turn)
    # The browser says it prefers English: the participant's choice wins, as on the pages.
    response = client.get(_urls(version)["events"](turn), HTTP_ACCEPT_LANGUAGE="en")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "StreamingHttpResponse must consume asynchronous iterators")
        events = _parse_events(b"".join(response).decode())
    assert events[0][0] == "done" and events[0][1]["usage"]["ended"] is True
    assert events[0][1]["usage"]["message"] == "本次对话的消息数已用完。请继续。"
    refused = _send(client, version, "再问？", nonce="m")
    assert refused.status_code == 409 and refused.json()["message"] == "本次对话的消息数已用完。请继续。"


# --- cut-off replies and asking again -----------------------------------------------------------------

CUT = " ".join(f"Income{n} comes first, then the debt ratio." for n in range(10))


def _cut_off_turn(client, version, fake_llm) -> Turn:
    """Send a message whose reply streams half and then loses its connection."""
    fake_llm.queue({"fail": "drop", "reply": CUT})
    turn_id = _send(client, version, "What comes first?", nonce="cut").json()["turn"]
    assert explainer_services.reply_generate(turn_id=turn_id).state == "failed"
    turn = Turn.objects.get(pk=turn_id)
    assert turn.cut_off and CUT.startswith(turn.shown_text) and 0 < len(turn.shown_text) < len(CUT)
    return turn


def test_a_cut_off_reply_is_sent_and_rendered_with_the_text_shown_and_continue_completes_it(chat_client, fake_llm):
    version, client, _ = chat_client()
    turn = _cut_off_turn(client, version, fake_llm)
    shown = turn.shown_text

    (kind, data), = _parse_events(_events(client, version, turn.pk))
    assert kind == "failed" and data["cut_off"] is True and data["opening"] is False
    assert data["kept_chars"] == len(shown)
    assert re.sub(r"<[^>]+>", "", data["html"]).strip() == shown.strip()  # sanitised Markdown of what was seen
    assert data["usage"]["turns_left"] == 20  # a cut-off reply uses no message

    section = _chat_section(client.get(_urls(version)["page"]).content.decode())
    kept = re.search(rf'<li class="turn explainer" data-reply-to="{turn.pk}" data-status="failed" data-cut-off '
                     rf'data-kept-chars="{len(shown)}">(.*?)</li>', section, re.S)
    assert kept, section
    assert re.sub(r"<[^>]+>", "", kept.group(1)).strip() == shown.strip()
    assert _attr(section, "data-pending") == ""

    fake_llm.queue({"reply": " And that is all."})
    response = client.post(_urls(version)["retry"](turn.pk), {"mode": "continue"})
    assert response.status_code == 202 and response.json()["status"] == "pending"
    turn.refresh_from_db()
    assert turn.status == Turn.Status.PENDING and turn.shown_text == shown  # kept while it continues
    section = _chat_section(client.get(_urls(version)["page"]).content.decode())
    assert _attr(section, "data-pending") == str(turn.pk) and _attr(section, "data-kept-chars") == str(len(shown))
    _answer(turn.pk)
    assert fake_llm.requests()[-1]["body"]["messages"][-2] == {"role": "assistant", "content": shown}
    reply = Turn.objects.get(reply_to_id=turn.pk)
    assert reply.text == shown + " And that is all."
    (kind, data), = _parse_events(_events(client, version, turn.pk))
    assert kind == "done" and "And that is all." in data["html"]
    section = _chat_section(client.get(_urls(version)["page"]).content.decode())
    assert "data-cut-off" not in section and f'data-turn="{reply.pk}"' in section


def test_send_again_after_a_cut_off_drops_the_text_shown_and_asks_afresh(chat_client, fake_llm):
    version, client, _ = chat_client()
    turn = _cut_off_turn(client, version, fake_llm)
    fake_llm.queue({"reply": "A fresh answer."})
    assert client.post(_urls(version)["retry"](turn.pk), {"mode": "again"}).status_code == 202
    turn.refresh_from_db()
    assert turn.status == Turn.Status.PENDING and turn.shown_text == ""
    _answer(turn.pk)
    assert Turn.objects.get(reply_to_id=turn.pk).text == "A fresh answer."
    assert not any(m["role"] == "assistant" and m["content"].startswith("Income0")
                   for m in fake_llm.requests()[-1]["body"]["messages"])


def test_send_again_without_a_mode_is_again_and_a_failure_without_text_is_not_cut_off(chat_client, fake_llm):
    version, client, _ = chat_client()
    fake_llm.queue({"fail": "401"})
    turn = _send(client, version, "Why?", nonce="n").json()["turn"]
    assert explainer_services.reply_generate(turn_id=turn).state == "failed"
    (kind, data), = _parse_events(_events(client, version, turn))
    assert kind == "failed" and data["cut_off"] is False and data["html"] == "" and data["opening"] is False
    section = _chat_section(client.get(_urls(version)["page"]).content.decode())
    assert f'data-turn="{turn}" data-status="failed"' in section and "data-reply-to" not in section
    assert client.post(_urls(version)["retry"](turn)).status_code == 202
    assert Turn.objects.get(pk=turn).status == Turn.Status.PENDING


@pytest.mark.parametrize("mode", ["sideways", "AGAIN", "continue "])
def test_a_retry_with_an_unknown_mode_is_400_and_changes_nothing(chat_client, fake_llm, mode):
    version, client, _ = chat_client()
    turn = _cut_off_turn(client, version, fake_llm)
    response = client.post(_urls(version)["retry"](turn.pk), {"mode": mode})
    assert response.status_code == 400 and response.json()["error"] == "mode"
    assert Turn.objects.get(pk=turn.pk).cut_off  # still failed, text kept


def test_a_retry_is_404_unless_it_is_the_participants_own_failed_turn(chat_client, fake_llm, enter, step_through):
    version, client, _ = chat_client()
    turn = _cut_off_turn(client, version, fake_llm)
    urls = _urls(version)

    stranger, _ = enter(version, pid="PID0000000000000000000004")  # another participant, in the chat too
    step_through(stranger, version, times=1 + 5)
    assert Participant.objects.get(token=_token(stranger, version)).step == Step.EXPLANATION
    for mode in ("continue", "again"):
        assert stranger.post(urls["retry"](turn.pk), {"mode": mode}).status_code == 404
    assert Turn.objects.get(pk=turn.pk).cut_off

    fake_llm.queue({"reply": "Fine."})
    answered = _send(client, version, "And then?", nonce="n2").json()["turn"]
    _answer(answered)
    reply = Turn.objects.get(reply_to_id=answered)
    for turn_id in (answered, reply.pk, reply.pk + 1000):  # answered, the explainer's reply, no such turn
        assert client.post(urls["retry"](turn_id), {"mode": "again"}).status_code == 404, turn_id
    assert Turn.objects.get(pk=answered).status == Turn.Status.ANSWERED
    assert client.post(urls["retry"](turn.pk), {"mode": "again"}).status_code == 202  # its own failed turn


def test_a_failed_opening_of_the_agentic_arm_is_shown_and_can_be_asked_again(launch, fake_llm, enter, step_through):
    from agentic_support import agentic_arms, run

    version = launch(lambda data: agentic_arms(data, arms={"full": {}}))
    client, _ = enter(version, pid=PID)
    step_through(client, version, times=1 + 5)
    fake_llm.set_behaviour(fail="401")  # every call of the opening fails for good
    client.get(_urls(version)["page"])  # starts the conversation: the explainer speaks first
    opening = Turn.objects.get(author=Turn.Author.EXPLAINER, reply_to__isnull=True)
    assert run(opening.pk) == "failed"

    (kind, data), = _parse_events(_events(client, version, opening.pk))
    assert kind == "failed" and data["opening"] is True and data["cut_off"] is False
    section = _chat_section(client.get(_urls(version)["page"]).content.decode())
    assert f'<li class="turn explainer" data-reply-to="{opening.pk}" data-status="failed" data-opening>' in section
    assert _attr(section, "data-msg-no-start") == "The explainer could not start."

    fake_llm.set_behaviour(fail=None)
    assert client.post(_urls(version)["retry"](opening.pk), {"mode": "continue"}).status_code == 202
    run(opening.pk)
    assert Turn.objects.get(pk=opening.pk).status == Turn.Status.COMPLETE
    section = _chat_section(client.get(_urls(version)["page"]).content.decode())
    assert "data-opening" not in section and f'data-turn="{opening.pk}" data-status="complete"' in section
