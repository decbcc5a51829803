"""Links the model writes are plain text unless the study allows them (`display.model_links`)."""
import json
import warnings

import pytest

from conftest import chat_only
from explainers import services as explainer_services
from participants.chat_display import reply_html
from participants.models import Participant, Step
from studies.spec import StudyFileInvalid, model_links_allowed, study_file_read

pytestmark = pytest.mark.django_db

REPLY = "Read [the bank's guide](https://bank.example.com/guide) or https://bare.example.net/x, and **bold** stays."
LINKED = '<a href="https://bank.example.com/guide" rel="noopener noreferrer nofollow">the bank\'s guide</a>'


@pytest.fixture(autouse=True)
def _in_process(in_process):
    """Replies run inside the test's transaction (conftest's `in_process`)."""


def _chat_with_a_linked_reply(launch, fake_llm, enter, step_through, study_display=None, arm_display=None):
    def edit(data):
        chat_only(data)
        if study_display is not None:
            data["display"] = study_display
        if arm_display is not None:
            data["arms"][0]["display"] = arm_display

    version = launch(edit)
    client, _ = enter(version, pid="0123456789abcdef01234567")
    step_through(client, version, times=1 + 5)
    participant = Participant.objects.order_by("-id").first()
    assert participant.step == Step.EXPLANATION and participant.arm == "chat"
    slug = version.study.slug
    client.get(f"/s/{slug}/explanation/")
    fake_llm.set_behaviour(reply=REPLY)
    turn = client.post(f"/s/{slug}/chat/send/", {"text": "where can I read more?"}).json()["turn"]
    assert explainer_services.reply_generate(turn_id=turn).state == "answered"
    page = client.get(f"/s/{slug}/explanation/").content.decode()
    response = client.get(f"/s/{slug}/chat/events/{turn}/")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "StreamingHttpResponse must consume asynchronous iterators")
        body = b"".join(response).decode()
    done = next(json.loads(block.split("data: ", 1)[1]) for block in body.split("\n\n") if "event: done" in block)
    return page, done["html"]


def test_a_reply_with_a_markdown_link_and_a_bare_address_shows_no_link_by_default(
        launch, fake_llm, enter, step_through):
    page, streamed = _chat_with_a_linked_reply(launch, fake_llm, enter, step_through)
    for html in (page, streamed):  # the page (a reload) and the end of the live stream
        assert 'href="https://bank.example.com' not in html and 'href="https://bare.example.net' not in html
        assert "the bank's guide (https://bank.example.com/guide)" in html
        assert "https://bare.example.net/x" in html and "<strong>bold</strong>" in html
    assert "<a " not in streamed


def test_a_study_that_allows_model_links_gets_them_with_nofollow_noopener(launch, fake_llm, enter, step_through):
    page, streamed = _chat_with_a_linked_reply(launch, fake_llm, enter, step_through, study_display={"model_links": True})
    for html in (page, streamed):
        assert LINKED in html
        assert 'href="https://bare.example.net' not in html  # a bare address is never made a link
    assert streamed.count("<a ") == 1


def test_an_arm_can_refuse_links_the_study_allows(launch, fake_llm, enter, step_through):
    page, streamed = _chat_with_a_linked_reply(launch, fake_llm, enter, step_through,
                                               study_display={"model_links": True}, arm_display={"model_links": False})
    assert "<a " not in streamed and 'href="https://bank.example.com' not in page


@pytest.mark.parametrize("study, arm, allowed", [
    (None, None, False), ({"model_links": True}, None, True), ({"model_links": True}, {"model_links": False}, False),
    (None, {"model_links": True}, True), ({}, {}, False),
])
def test_the_arm_display_wins_over_the_study_display(study, arm, allowed):
    spec = {"arms": [{"id": "chat", **({"display": arm} if arm is not None else {})}],
            **({"display": study} if study is not None else {})}
    assert model_links_allowed(spec, "chat") is allowed


@pytest.mark.parametrize("text, plain", [
    ("[docs](https://x.example.org)", "docs (https://x.example.org)"),
    ("<https://auto.example.org>", "https://auto.example.org"),
    ("[write](mailto:someone@example.org)", "write (mailto:someone@example.org)"),
    ("[**bold** text](https://x.example.org/a)", "<strong>bold</strong> text (https://x.example.org/a)"),
    ("[x](javascript:alert(1))", "[x](javascript:alert(1))"),
])
def test_links_become_their_text_and_address_as_plain_text(text, plain):
    html = reply_html(text)
    assert plain in html and "<a" not in html and "href" not in html


def test_display_is_checked_with_its_line(study_folder):
    def edit(data):
        data["display"] = {"model_links": "yes"}
        data["arms"][0]["display"] = {"links": True}

    with pytest.raises(StudyFileInvalid) as raised:
        study_file_read(study_folder(edit))
    paths = {e.path for e in raised.value.errors}
    assert "display.model_links" in paths and any(p.startswith("arms[0].display") for p in paths)
    assert all(e.line for e in raised.value.errors)
