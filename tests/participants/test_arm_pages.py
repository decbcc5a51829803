"""Each arm's chat page says what it is: its heading, instructions and placeholder by kind, or the study file's
`arms[].page`, in the participant's language."""
import pytest

from participants.chat_display import page_texts
from studies.protocol import Protocol

pytestmark = pytest.mark.django_db


def test_each_kind_has_its_own_texts_and_a_leading_explainer_says_it_leads(launch):
    version = launch()
    protocol = Protocol(version.spec)
    texts = {arm["id"]: page_texts(protocol, arm, "en") for arm in version.spec["arms"] if arm["kind"] != "static"}
    kinds = {arm["id"]: arm["kind"] for arm in version.spec["arms"]}
    assert len({t["instructions"] for t in texts.values()}) == len({kinds[a] for a in texts})
    for arm_id, text in texts.items():
        assert text["heading"] and text["instructions"] and text["placeholder"]
        if kinds[arm_id] == "agentic":
            assert "will lead" in text["instructions"]
        if kinds[arm_id] != "chat":
            assert "Ask the assistant anything" not in text["instructions"]
    chat = next(a for a in version.spec["arms"] if a["kind"] == "chat")
    assert page_texts(protocol, chat, "zh-hans")["heading"] == "向助手提问"


def test_the_study_file_can_give_an_arm_its_own_texts_in_every_language(launch):
    def own_texts(data):
        tutor = next(a for a in data["arms"] if a["kind"] == "tutor")
        tutor["page"] = {"heading": {"en": "Meet the loan tutor", "zh-hans": "认识贷款导师"}}

    version = launch(own_texts)
    protocol = Protocol(version.spec)
    tutor = next(a for a in version.spec["arms"] if a["kind"] == "tutor")
    assert page_texts(protocol, tutor, "en")["heading"] == "Meet the loan tutor"
    assert page_texts(protocol, tutor, "zh-hans")["heading"] == "认识贷款导师"
    assert "one idea at a time" in page_texts(protocol, tutor, "en")["instructions"]  # the rest as by kind
