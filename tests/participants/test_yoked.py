"""A yoked static arm: the n-th participant of the arm reads the n-th agentic transcript to have ended."""
import pytest

from agentic_support import agentic_arms, converse
from explainers.services import conversation_end
from participants.models import Participant, Step
from studies.models import StudyVersion

pytestmark = pytest.mark.django_db


def _transcript(page: str) -> str:
    return page[page.index("data-yoked"):page.index("</section>")]


def test_the_nth_yoked_participant_reads_the_nth_ended_transcript_or_else_the_material(
        launch, fake_llm, in_process, enter, step_through, settings):
    def edit(data):
        agentic_arms(data, arms={"agentic": {}}, yoked=True)
        data["arms"][-1]["options"]["yoked_screen"] = "redact"  # the automatic screen alone (test_yoked_screening.py)

    version = launch(edit)
    for words in ("first transcript, my own words", "second transcript, my own words"):
        conversation = converse(version, "agentic", [words])
        conversation_end(conversation=conversation, reason="participant")
    # the agentic arm takes nobody now (weight 0), so allocation sends people only to the yoked static arm
    # (an arm left without a model would pause the study instead: tests/participants/test_arm_unavailable.py)
    arms = [{**a, "weight": 0} if a["kind"] == "agentic" else a for a in version.spec["arms"]]
    StudyVersion.objects.filter(pk=version.pk).update(spec={**version.spec, "arms": arms})

    pages = []
    for n in range(3):
        client, _ = enter(version, pid=f"yoked-reader-{n:012d}")
        step_through(client, version, times=1 + 5)
        pages.append(client.get(f"/s/{version.study.slug}/explanation/").content.decode())
        pages.append(client.get(f"/s/{version.study.slug}/explanation/").content.decode())  # a reload: the same
        assert client.post(f"/s/{version.study.slug}/explanation/").status_code == 303
    readers = list(Participant.objects.order_by("allocated_at", "id"))
    assert [p.arm for p in readers] == ["yoked"] * 3 and all(p.step == Step.POST_TEST for p in readers)
    assert "first transcript" in pages[0] and "second transcript" not in pages[0]
    assert _transcript(pages[0]) == _transcript(pages[1])
    assert "second transcript" in pages[2] and "first transcript" not in pages[2]
    assert "scripted demo model" in pages[2] and "How the loan model decides" not in pages[2]
    assert "How the loan model decides" in pages[4] and "transcript" not in pages[4]  # none had ended for the third
    shown = [p.conversation.yoked_from for p in readers]
    assert shown[0] is not None and shown[1] is not None and shown[0] != shown[1] and shown[2] is None
    assert shown[0].ended_at < shown[1].ended_at
    assert not readers[0].conversation.turns.exists()  # the reader's record holds what was shown, not a copy
