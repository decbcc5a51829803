"""The agentic arm's ablations: each one changes the explainer's prompts exactly where it should.

Every test runs the full agentic arm and the ablated arm on the same scripted participant messages (the
fake provider as a good explainer, in-process) and compares the LLM calls' requests.
"""
import json

import pytest

from agentic_support import agentic_arms, conversation_calls, converse, final_replies, reply_systems, sections
from explainers.arms.agentic import ACT_INSTRUCTIONS, MODEL_NOTE, OPENING_CUE, ROLE_ANSWER_ONLY, ROLE_PROACTIVE, _model_brief
from explainers.models import Turn
from studies.spec import StudyFileInvalid, study_file_read

pytestmark = pytest.mark.django_db

MESSAGES = ["ok", "b", "what does the debt ratio mean?", "a", "ok", "b", "ok"]


@pytest.fixture
def study(launch, fake_llm, in_process):
    return launch(agentic_arms)


def shown(state: dict) -> dict:
    """A learner model as a reply's prompt shows it."""
    return json.loads(_model_brief(state))


def _without(text: str, *parts: str) -> str:
    for part in parts:
        text = text.replace(part, "")
    return " ".join(text.split())


def _replies_to_messages(conversation):
    """The system prompts of the replies to the participant's messages (not the opening), by section."""
    return [sections(c.request["messages"][0]["content"]) for c in final_replies(conversation)
            if c.turn.author == Turn.Author.PARTICIPANT]


def _tools(conversation):
    return [c.request["tools"] for c in conversation_calls(conversation, "reply")]


def test_a_passive_explainer_neither_opens_nor_makes_moves_and_is_told_to_answer_only(study):
    full = converse(study, "full", MESSAGES)
    passive = converse(study, "passive", MESSAGES)
    assert full.turns.order_by("id").first().author == Turn.Author.EXPLAINER
    assert passive.turns.order_by("id").first().author == Turn.Author.PARTICIPANT  # it did not open
    explainer = passive.turns.filter(author=Turn.Author.EXPLAINER)
    assert explainer.count() == len(MESSAGES) and not explainer.exclude(act="").exists()  # no check, no move
    assert not [c for c in conversation_calls(passive) if OPENING_CUE in json.dumps(c.request)]
    # the learner model is still kept: one update per message, one snapshot per message
    assert len(conversation_calls(passive, "learner_update")) == len(MESSAGES)
    assert passive.snapshots.count() == 1 + len(MESSAGES)
    for f, p in zip(_replies_to_messages(full), _replies_to_messages(passive), strict=True):
        assert set(f) - set(p) == {"next_move"} and set(p) <= set(f)
        assert f["concepts"] == p["concepts"] and f["tools"] == p["tools"]
        assert ROLE_PROACTIVE in f["text"] and ROLE_ANSWER_ONLY in p["text"] and ROLE_PROACTIVE not in p["text"]
        assert _without(f["text"], ROLE_PROACTIVE, *ACT_INSTRUCTIONS.values()) == _without(p["text"], ROLE_ANSWER_ONLY)
    assert _tools(passive)[0] == _tools(full)[0]


def test_without_a_learner_model_there_are_no_updates_no_snapshots_and_no_model_in_the_prompt(study):
    full = converse(study, "full", MESSAGES)
    no_model = converse(study, "no_model", MESSAGES)
    assert conversation_calls(full, "learner_update") and not conversation_calls(no_model, "learner_update")
    assert not no_model.snapshots.exists()
    assert no_model.turns.filter(author=Turn.Author.EXPLAINER, reply_to__isnull=True).exists()  # still opens
    assert no_model.turns.filter(act="check").exists()  # and still checks, from a fixed order of concepts
    full_prompts = [sections(s) for s in reply_systems(full)]
    for f, n in zip(full_prompts, [sections(s) for s in reply_systems(no_model)]):
        assert set(f) - set(n) == {"learner_model"} and set(n) <= set(f)
        assert f["concepts"] == n["concepts"] and f["tools"] == n["tools"]
        assert _without(f["text"], MODEL_NOTE, *ACT_INSTRUCTIONS.values()) == _without(n["text"], *ACT_INSTRUCTIONS.values())
    assert _tools(no_model)[0] == _tools(full)[0]
    no_model.refresh_from_db()
    assert no_model.learner_model_from is None


def test_a_mismatched_model_is_the_previous_participants_snapshot_by_snapshot(study):
    donor = converse(study, "mismatched", MESSAGES)  # the first of its arm: it has nobody else's, so its own
    assert donor.learner_model_from is None
    full = converse(study, "full", MESSAGES, right=True)
    mismatched = converse(study, "mismatched", MESSAGES, right=True)
    assert mismatched.learner_model_from == donor
    donor_states = {s.index: s.state for s in donor.snapshots.all()}
    own_index = {s.turn_id: s.index for s in mismatched.snapshots.exclude(turn=None)}
    shown_differs = False
    for call, f in zip(final_replies(mismatched), [sections(s) for s in reply_systems(full)]):
        m = sections(call.request["messages"][0]["content"])
        assert set(m) == set(f) and m["concepts"] == f["concepts"] and m["tools"] == f["tools"]
        index = own_index.get(call.turn_id, 0)  # the opening sees the donor's first snapshot
        assert json.loads(m["learner_model"]) == shown(donor_states[min(index, max(donor_states))])
        shown_differs |= m["learner_model"] != f["learner_model"]
    assert shown_differs  # the full arm shows this participant's own model; the mismatched arm, the donor's
    # its own model is still updated and kept (the analysis can compare the two)
    assert len(conversation_calls(mismatched, "learner_update")) == len(MESSAGES)
    assert mismatched.snapshots.count() == 1 + len(MESSAGES)


def test_a_frozen_model_is_the_pretests_in_every_prompt_and_never_updated(study):
    full = converse(study, "full", MESSAGES)
    frozen = converse(study, "frozen", MESSAGES)
    assert not conversation_calls(frozen, "learner_update")
    assert [s.index for s in frozen.snapshots.all()] == [0]
    pretest_state = frozen.snapshots.get().state
    frozen_prompts = [sections(s) for s in reply_systems(frozen)]
    for f, z in zip([sections(s) for s in reply_systems(full)], frozen_prompts):
        assert set(f) == set(z) and f["concepts"] == z["concepts"] and f["tools"] == z["tools"]
    assert all(json.loads(z["learner_model"]) == shown(pretest_state) for z in frozen_prompts)
    assert json.loads(sections(reply_systems(full)[-1])["learner_model"]) != shown(pretest_state)
    assert frozen.turns.filter(check_correct__isnull=False).exists()  # answers are still read, just not learned from


def test_arm_options_are_checked_with_their_line(study_folder):
    def edit(data):
        agentic_arms(data, arms={"full": {"proactiv": True, "learner_model": "sometimes"}}, yoked=True)
        data["arms"][1]["options"]["yoked_to"] = "nowhere"

    with pytest.raises(StudyFileInvalid) as raised:
        study_file_read(study_folder(edit))
    errors = {(e.path, e.message) for e in raised.value.errors}
    assert ("arms[0].options.proactiv", "unknown option; did you mean 'proactive'?") in errors
    assert ("arms[0].options.learner_model", "must be one of: true, false, mismatched, frozen") in errors
    assert ("arms[1].options.yoked_to", "unknown arm 'nowhere'") in errors
    assert all(e.line for e in raised.value.errors)
