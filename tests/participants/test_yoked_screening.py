"""Yoked transcripts are screened before anyone reads them: redacted by rule, then (by default) approved by a
researcher in the console; the first participant's own turns stay as written."""
import csv

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from agentic_support import agentic_arms
from analysis.export import study_export
from explainers.models import Conversation, TranscriptScreening, Turn
from explainers.services import conversation_end
from participants.models import Participant, Step
from studies.models import AuditEvent, Membership, StudyVersion
from studies.spec import StudyFileInvalid, study_file_read

pytestmark = pytest.mark.django_db

SECRETS = ("Anna", "Lindqvist", "anna.lindqvist@example.org", "@example", "+46", "123 45 67",
           "phish.example.com", "evil.example.net")


def a_turns(label: str) -> list[tuple[str, str]]:
    return [
        ("participant", f"Hi, my name is Anna Lindqvist ({label} conversation). Write to anna.lindqvist@example.org "
                        "or call +46 70 123 45 67."),
        ("explainer", "Nice to meet you, Anna! The loan model weighs the debt ratio most: at 0.18 it approves, and "
                      "an income of 41.5 helps. See [the bank's guide](https://phish.example.com/guide) or "
                      "https://evil.example.net/x."),
        ("participant", "So a debt ratio of 0.18 is low?\n\nThanks,\nAnna"),
        ("explainer", "Yes, Anna: 0.18 is low. Applications from 2024-03-15 on used the same rule, "
                      "also for $41,500 incomes."),
    ]


def _study(launch, screen: str | None):
    def edit(data):
        agentic_arms(data, arms={"agentic": {}}, yoked=True)
        if screen:
            data["arms"][-1]["options"]["yoked_screen"] = screen

    return launch(edit)


def _only(version, arm_id: str) -> None:
    """Allocate everyone to `arm_id` from now on (the other arm's weight 0, blocks of one)."""
    version.refresh_from_db()
    arms = [{**a, "weight": 1 if a["id"] == arm_id else 0} for a in version.spec["arms"]]
    allocation = {**version.spec["allocation"], "block_size": 1}
    StudyVersion.objects.filter(pk=version.pk).update(spec={**version.spec, "arms": arms, "allocation": allocation})


def _pid(n: int) -> str:
    return f"{n:024x}"


def _first_participant(version, enter, step_through, n: int, label: str) -> Participant:
    """A participant of the agentic arm whose conversation was `a_turns(label)`, ended."""
    client, _ = enter(version, pid=_pid(n))
    step_through(client, version, times=1 + 5)
    participant = Participant.objects.order_by("-id").first()
    assert participant.arm == "agentic" and participant.step == Step.EXPLANATION
    conversation = Conversation.objects.create(version=version, version_sha256=version.sha256, arm="agentic")
    Participant.objects.filter(pk=participant.pk).update(conversation=conversation)
    asked = None
    for author, text in a_turns(label):
        if author == "participant":
            asked = Turn.objects.create(conversation=conversation, author=author, text=text, status="answered")
        else:
            Turn.objects.create(conversation=conversation, author=author, text=text, status="complete", reply_to=asked)
    conversation_end(conversation=conversation, reason="participant")
    participant.refresh_from_db()
    return participant


def _reader(version, enter, step_through, n: int):
    """A participant of the yoked arm at the explanation: (client, page, participant)."""
    client, _ = enter(version, pid=_pid(n))
    step_through(client, version, times=1 + 5)
    page = client.get(f"/s/{version.study.slug}/explanation/").content.decode()
    participant = Participant.objects.order_by("-id").first()
    assert participant.arm == "yoked"
    return client, page, participant


def _transcript(page: str) -> str:
    return page[page.index("data-yoked"):page.index("</section>")]


def _researcher(study, role: str) -> Client:
    user = get_user_model().objects.create_user(f"{role}-screener")
    Membership.objects.create(study=study, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client


def test_a_yoked_reader_sees_the_transcript_without_the_names_emails_phones_and_links_in_it(
        launch, fake_llm, enter, step_through, tmp_path):
    version = _study(launch, "redact")
    _only(version, "agentic")
    first = _first_participant(version, enter, step_through, 1, "first")
    _only(version, "yoked")
    client, page, reader = _reader(version, enter, step_through, 2)

    shown = _transcript(page)
    for secret in SECRETS:
        assert secret not in page, secret
    assert "https://" not in shown and "<a " not in shown
    for kept in ("first conversation", "debt ratio most", "0.18", "41.5", "2024-03-15", "$41,500",
                 "guide [link removed]", "[name removed]", "[e-mail removed]", "[phone removed]", "[link removed]"):
        assert kept in shown, kept
    assert "How the loan model decides" not in page  # the transcript, not the material
    assert client.get(f"/s/{version.study.slug}/explanation/").content.decode().count("[name removed]") == \
        page.count("[name removed]")  # a reload shows the same

    # what the reader was shown is on record: which transcript, and that it was redacted
    assert reader.conversation.yoked_from_id == first.conversation_id
    screening = TranscriptScreening.objects.get(conversation_id=first.conversation_id)
    assert (screening.mode, screening.status, screening.decided_by) == ("redact", "passed", None)
    assert screening.redactions == {"name": 4, "email": 1, "phone": 1, "link": 2}

    # the first participant's own turns are theirs: unchanged in the database and in the export
    assert [(t.author, t.text) for t in first.conversation.turns.order_by("id")] == a_turns("first")
    study_export(slug=version.study.slug, out=tmp_path / "export", fmt="csv")
    with (tmp_path / "export" / "turns.csv").open(encoding="utf-8") as f:
        exported = [row for row in csv.DictReader(f) if row["pseudonym"] == first.pseudonym]
    assert [(row["author"], row["text"]) for row in exported] == a_turns("first")
    with (tmp_path / "export" / "participants.csv").open(encoding="utf-8") as f:
        rows = {row["pseudonym"]: row for row in csv.DictReader(f)}
    assert (rows[reader.pseudonym]["yoked_from"], rows[reader.pseudonym]["yoked_screen"]) == (first.pseudonym, "redact")
    assert rows[first.pseudonym]["yoked_screen"] == ""


def test_with_approve_no_one_reads_a_transcript_until_a_researcher_approves_it_in_the_console(
        launch, fake_llm, enter, step_through):
    version = _study(launch, None)  # approve is the default
    assert version.spec["arms"][-1]["options"] == {"yoked_to": "agentic"}
    _only(version, "agentic")
    firsts = [_first_participant(version, enter, step_through, n, label)
              for n, label in enumerate(("first", "second", "third"), start=1)]
    _only(version, "yoked")

    early_client, page, early = _reader(version, enter, step_through, 11)
    assert "How the loan model decides" in page and "data-yoked" not in page  # none has passed: the material
    assert early.conversation.yoked_from_id is None
    screenings = {s.conversation_id: s for s in TranscriptScreening.objects.all()}
    assert {s.status for s in screenings.values()} == {"pending"} and len(screenings) == 3

    slug = version.study.slug
    assert _researcher(version.study, "viewer").get(f"/console/{slug}/yoked/").status_code == 403
    analyst = _researcher(version.study, "analyst")
    listing = analyst.get(f"/console/{slug}/yoked/").content.decode()
    assert listing.count('data-status="pending"') == 3
    assert "[name removed]" in listing and "[e-mail removed]" in listing and "debt ratio most" in listing
    assert not any(secret in listing for secret in SECRETS)

    ids = [screenings[p.conversation_id].pk for p in firsts]
    for screening_id, decision in zip(ids, ("approve", "reject", "approve")):
        response = analyst.post(f"/console/{slug}/yoked/decide/", {"screening": screening_id, "decision": decision})
        assert response.status_code == 303
    again = analyst.post(f"/console/{slug}/yoked/decide/", {"screening": ids[1], "decision": "approve"}, follow=True)
    assert "decided already" in again.content.decode()  # a decision is final
    assert [TranscriptScreening.objects.get(pk=i).status for i in ids] == ["passed", "rejected", "passed"]
    assert TranscriptScreening.objects.get(pk=ids[0]).decided_by.username == "analyst-screener"
    audit = list(AuditEvent.objects.filter(action__startswith="transcript_").order_by("id"))
    assert [(e.action, e.actor, e.object_id) for e in audit] == [
        ("transcript_approve", "analyst-screener", str(ids[0])), ("transcript_reject", "analyst-screener", str(ids[1])),
        ("transcript_approve", "analyst-screener", str(ids[2])),
    ]
    other = _researcher(version.study, "editor")  # no data access: cannot decide
    assert other.post(f"/console/{slug}/yoked/decide/", {"screening": ids[0], "decision": "reject"}).status_code == 403

    # the second reader reads the second transcript to have passed (the third conversation: the second was rejected)
    _, page, second = _reader(version, enter, step_through, 12)
    shown = _transcript(page)
    assert "third conversation" in shown and "first conversation" not in shown and "second conversation" not in shown
    assert not any(secret in page for secret in SECRETS)
    assert second.conversation.yoked_from_id == firsts[2].conversation_id
    # the early reader keeps the material they were shown; a third reader finds no third passed transcript
    assert "data-yoked" not in early_client.get(f"/s/{slug}/explanation/").content.decode()
    _, page, third = _reader(version, enter, step_through, 13)
    assert "data-yoked" not in page and third.conversation.yoked_from_id is None
    assert [(t.author, t.text) for t in firsts[1].conversation.turns.order_by("id")] == a_turns("second")


def test_the_screen_options_are_checked_with_their_line(study_folder):
    def edit(data):
        agentic_arms(data, arms={"agentic": {}}, yoked=True)
        data["arms"][-1]["options"]["yoked_screen"] = "maybe"
        data["arms"][0]["options"]["yoked_screen"] = "redact"
        static = dict(data["arms"][-1], id="plain", options={"yoked_screen": "redact"})
        data["arms"].append(static)

    with pytest.raises(StudyFileInvalid) as raised:
        study_file_read(study_folder(edit))
    errors = {(e.path, e.message) for e in raised.value.errors}
    assert ("arms[1].options.yoked_screen", "must be one of: approve, redact") in errors
    assert ("arms[2].options.yoked_screen", "applies only with yoked_to") in errors
    assert any(path == "arms[0].options.yoked_screen" and message.startswith("unknown option")
               for path, message in errors)
    assert all(e.line for e in raised.value.errors)
