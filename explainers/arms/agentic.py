"""The `agentic` arm: a language model that keeps a model of the learner and teaches on its own initiative.

The policy is the tutor's (`learner.next_move`: the least mastered concept the learner is ready for, a
check question from the practice bank, a correction after a wrong answer, a summary at the end); the
language model updates the learner model (a structured-output call) and writes every turn, and may ask
the study's target through tools. docs/agentic.md describes the prompts, the calls and the ablations.

A turn's calls are made one per task delivery (the timing budget of docs/chat.md holds for each): the
worker asks `AgenticArm.plan` for the next call from what the turn's `LLMCall` rows already hold (the
learner-model update, then reply rounds, each tool round recorded in its row), makes it, and `step` says
what its outcome leads to; the reply's last round gives the explainer's turn and the snapshot, which
explainers.services saves in one transaction.
"""
import json

from django.utils import translation
from django.utils.translation import gettext as _

from studies.protocol import Protocol
from studies.spec import llm_limits

from ..endpoints import Endpoint
from ..learner import guess_rate, learner_model_initial, learner_model_validate, next_move, rule_step, update_schema
from ..learner.moves import case_rows, check_question_text, move_text
from ..learner.play import (
    TAUGHT_ACTS, check_graded, check_item_next, learner_model_from_pretest, option_letters, state_of_play,
)
from ..learner.wrapup import meeting_note_by_template, predicted_answer, predictions_by_rules
from ..models import Conversation, LearnerModelSnapshot, LLMCall, Turn
from ..prompts import CONTINUE_CUE, arm_material, conversation_history, fit_prompt, reply_unusable
from ..providers import LLMRequest, LLMResult
from ..selectors import latest_snapshot, previous_explainer_turn
from ..tools import target_tools, tool_exchange_messages
from .base import NOTE, PREDICTION, REPLY, UPDATE, Arm, Finish, Opening, Plan, Reply, Step, Wrapup
from .tutor import checks_so_far
OPENING = "opening"  # the time limits of a reply call that writes the opening
TOOL_CHOICES = ("auto", "required", "none")
STRUCTURED = ("json_schema", "json_object", "instructions")  # strongest first
TOOL_ROUNDS_MAX = 3           # rounds of tool calls before the model must write its reply
TOOL_ACTS = ("example", "correction")  # moves that show the concept on a case the target itself decides
STRUCTURED_MAX_TOKENS = 2000  # a whole learner model (or every post-test item) must fit in one answer
# The first user message when the explainer speaks first: a plain greeting (small models answer a greeting,
# and repeat a stage direction such as "the participant has opened the chat").
RETRY_TEMPERATURE = 0.9  # the one retry of an unusable reply samples at least this warm (docs/agentic.md)
OPENING_CUE = "Hello, I am ready to begin."
# Appended to the last user message of a reply's prompt: the move again, where a small model reads it last.
MOVE_CUE = "(A note for your reply, not written by the participant: {instruction}{concept} Write only your message to the participant.)"
LANGUAGE_NAMES = {"en": "English", "zh-hans": "Simplified Chinese (简体中文)"}

ROLE_PROACTIVE = (
    "You lead this conversation. Teach the concepts below one at a time, making the move that the next_move "
    "section gives, and check understanding with the questions it gives. If the participant asks something, "
    "answer it briefly first, then make your move. Keep every message under 120 words."
)
ROLE_ANSWER_ONLY = (
    "Answer what the participant asks, truthfully, briefly and plainly. Do not take the initiative: do not "
    "ask questions of your own and do not move on to topics they did not ask about."
)
MODEL_NOTE = (
    "This is your current model of the participant: mastery is the probability (0 to 1) that they know each "
    "concept, misconceptions are what they seem to believe wrongly. Pitch your message to it; never show it "
    "or mention its numbers."
)
TOOLS_NOTE = (
    "You can ask the model itself with the tools predict(input) and what_if(input, feature, value). Use them "
    "for concrete examples and report the model's real outputs, never guesses. The study's test cases are "
    "held out: a call on one of them is refused."
)
ACT_INSTRUCTIONS = {
    "explain": "Explain this concept in two to four short sentences, in plain words. Then invite the participant "
               "to say when they are ready, or to ask.",
    "example": "Show this concept on one concrete case: ask the model with a tool and report what it answers.",
    "analogy": "Make this concept vivid with one short everyday analogy, then relate it back to the model.",
    "check": "Ask the check question exactly as written, with its case (when it has one), its options and "
             "their letters, and ask the participant to answer with a letter. Do not hint at the answer.",
    "correction": "The participant answered the last check question wrongly. Say so kindly, give the right "
                  "answer and why, in two or three sentences; when the model was asked about a case, use it.",
    "summary": "Summarise how the model decides in a few short bullet points, one per concept, and tell the "
               "participant they can continue when they are ready.",
}
UPDATE_TASK = (
    "You keep an explainer's model of one participant who is learning how a model decides. Update it from "
    "the last exchange (below: what the explainer said, what the participant answered, and the evidence). "
    "Mastery is the probability (0 to 1) that the participant knows the concept: raise it a little when a "
    "concept was taught, more after a right answer to a check question, and lower it after a wrong one or "
    "when the participant shows a misconception. Keep each concept's evidence to its five most recent notes; "
    "list misconceptions they showed; background is what you learned about them; why says what changed at "
    "this turn and why. Return the whole model as JSON."
)
PREDICTION_TASK = (
    "The explanation is over. From your model of the participant, give for every post-test item below the "
    "probability (0 to 1) that they will answer it correctly."
)
NOTE_TASK = (
    "The explanation is over. Write the participant a short note (three to five sentences, addressed to "
    "them as 'you'): what you covered together, what seemed clear, and what is worth another look. "
    "No lists, no numbers from the model."
)


def agentic_options(arm: dict) -> tuple[bool, object]:
    """Return (proactive, learner_model mode) of an agentic arm; studies.spec checks the values."""
    options = arm.get("options") or {}
    return bool(options.get("proactive", True)), options.get("learner_model", True)


def _concepts_json(protocol: Protocol, lang: str) -> str:
    concepts = [{"id": c["id"], "label": protocol.text(c["label"], lang), "description": protocol.text(c["description"], lang)}
                for c in protocol.spec["concepts"]]
    return json.dumps(concepts, ensure_ascii=False, indent=1)


def _model_json(state: dict) -> str:
    """The model as the prompt shows it, in the schema's order (the database keeps JSON keys in its own)."""
    order = ("schema_version", "concepts", "misconceptions", "background", "next_goal", "why")
    return json.dumps({k: state[k] for k in order if k in state}, ensure_ascii=False, indent=1)


def _model_brief(state: dict) -> str:
    """The model as a reply or the note is shown it: mastery per concept, misconceptions, background (the
    evidence and the bookkeeping are for the update; a long JSON block invites a small model to echo it)."""
    brief = {"concepts": {c: {"mastery": v["mastery"]} for c, v in state["concepts"].items()},
             "misconceptions": state.get("misconceptions") or [], "background": state.get("background") or ""}
    return json.dumps(brief, ensure_ascii=False)


def _move_cue(protocol: Protocol, move: dict, lang: str) -> str:
    concept = next((c for c in protocol.spec["concepts"] if c["id"] == move["concept"]), None)
    about = (f" The concept: {protocol.text(concept['label'], lang)}: {protocol.text(concept['description'], lang)}."
             if concept is not None and move["act"] != "summary" else "")
    return MOVE_CUE.format(instruction=ACT_INSTRUCTIONS[move["act"]], concept=about)


def move_instructions(move: dict | None) -> tuple[str, ...]:
    """What the reply of a move was told to do, which it must not recite back."""
    return (ROLE_PROACTIVE, MODEL_NOTE, TOOLS_NOTE, ACT_INSTRUCTIONS[move["act"]] if move else "")


def _structured_params(llm: dict) -> dict:
    return {**llm["params"], "max_tokens": max(int(llm["params"].get("max_tokens") or 0), STRUCTURED_MAX_TOKENS)}


def _request(endpoint: Endpoint, llm: dict, messages: list[dict], kind: str, **kwargs) -> LLMRequest:
    kwargs.setdefault("params", dict(llm["params"]))
    return LLMRequest(provider=endpoint.provider, model=llm["model"], messages=messages, base_url=endpoint.base_url,
                      **llm_limits(llm=llm, kind=kind), **kwargs)


def endpoint_strategy(*, version, arm: dict) -> tuple[str, str, str]:
    """Return (tool_choice, structured_output, where they come from) for an agentic arm.

    The study file's `llm.tool_choice` / `llm.structured_output` win; else the recommendation of the
    endpoint probe stored on the version (`llm_check`); else `auto` and `json_schema`.
    """
    llm = arm["llm"]
    report = ((getattr(version, "llm_report", None) or {}).get("arms") or {}).get(arm["id"]) or {}
    recommended = {}  # only what the probe really found out (a probe that timed out knows nothing)
    if report.get("tools_auto") is not None or report.get("tools_required") is not None:
        recommended["tool_choice"] = (report.get("recommended") or {}).get("tool_choice")
    if report.get("json_schema") is not None or report.get("json_object") is not None:
        recommended["structured_output"] = (report.get("recommended") or {}).get("structured_output")
    tool_choice = llm.get("tool_choice") or recommended.get("tool_choice") or "auto"
    structured = llm.get("structured_output") or recommended.get("structured_output") or "json_schema"
    if llm.get("tool_choice") and llm.get("structured_output"):
        source = "study file"
    elif recommended:
        source = "study file and endpoint probe" if (llm.get("tool_choice") or llm.get("structured_output")) else "endpoint probe"
    else:
        source = "study file and defaults" if (llm.get("tool_choice") or llm.get("structured_output")) else "defaults"
    return tool_choice, structured, source


def _weaker(structured: str) -> str | None:
    index = STRUCTURED.index(structured)
    return STRUCTURED[index + 1] if index + 1 < len(STRUCTURED) else None


# --------------------------------------------------------------------------- the start


def agentic_open(*, conversation: Conversation, arm: dict, pretest: list[tuple[str, float]]) -> Opening:
    """The learner model before the conversation (from the pre-test) and, when the arm is proactive, an opening
    that the worker writes like any reply (the constraint `turn_one_opening_per_conversation` makes it
    unique). `learner_model: mismatched` borrows another participant's model: deterministically the previous
    conversation of this arm (none: one's own)."""
    protocol = Protocol(conversation.version.spec)
    proactive, mode = agentic_options(arm)
    snapshot = None if mode is False else (learner_model_from_pretest(protocol, pretest),
                                           LearnerModelSnapshot.Source.PRETEST)
    return Opening(snapshot=snapshot, borrows_model=mode == "mismatched", pending=proactive)


# --------------------------------------------------------------------------- one turn


def _valid_update(call: dict, concepts: list[str]) -> tuple[dict | None, str]:
    """Return (the model from a learner-update call, '') or (None, why it cannot be used)."""
    if call["status"] != LLMCall.Status.OK:
        return None, f"the call did not succeed ({call['error_kind'] or 'no answer'})"
    parsed = (call["response"] or {}).get("parsed")
    if not isinstance(parsed, dict):
        return None, "the answer held no JSON object"
    try:
        learner_model_validate(parsed)
    except ValueError as error:
        return None, f"invalid learner model: {error}"[:400]
    if sorted(parsed["concepts"]) != sorted(concepts):
        return None, "its concepts are not the study's"
    return parsed, ""


def _updated(own: dict, call: dict, concepts: list[str], question: Turn | None, item: dict | None,
             graded: bool | None) -> tuple[dict, str]:
    """The model after this turn: the LLM's update when it is valid, else the rule update (and why)."""
    parsed, reason = _valid_update(call, concepts)
    if parsed is not None:
        return parsed, LearnerModelSnapshot.Source.LLM
    taught = (question.concept, question.act) if question and question.act in TAUGHT_ACTS and question.concept else None
    check = (question.concept, graded, f"check {question.check_item}", guess_rate(item)) if graded is not None else None
    ruled = rule_step(own, taught=taught, check=check)
    change = ruled["why"] if (taught or check) else "nothing to update by rule"
    return {**ruled, "why": f"updated by rule because the LLM's update could not be used ({reason}): {change}"}, \
        LearnerModelSnapshot.Source.RULES


def _policy_state(conversation: Conversation, mode, state: dict | None, next_index: int, concepts: list[str]) -> dict:
    """The model the explainer acts on: its own, the pre-test's (frozen), another participant's (mismatched),
    or a flat one that knows nothing of the learner (no learner model)."""
    if mode is False:
        return learner_model_initial(concepts=concepts, pretest=[])
    if mode == "frozen":
        return conversation.snapshots.get(index=0).state
    if mode == "mismatched" and conversation.learner_model_from_id:
        donor = (LearnerModelSnapshot.objects.filter(conversation_id=conversation.learner_model_from_id,
                                                     index__lte=next_index).order_by("-index").first())
        if donor is not None:
            return donor.state
    return state


def agentic_plan(*, turn: Turn, conversation: Conversation, arm: dict, endpoint: Endpoint) -> Plan:
    """Return the next provider call for a pending turn (a participant's message, or the opening)."""
    protocol = Protocol(conversation.version.spec)
    lang = conversation.language
    llm = arm["llm"]
    proactive, mode = agentic_options(arm)
    tool_choice, structured, source = endpoint_strategy(version=conversation.version, arm=arm)
    concepts = [c["id"] for c in protocol.spec["concepts"]]
    calls = list(turn.llm_calls.order_by("id").values("purpose", "status", "response", "error_kind", "structured_output"))
    opening = turn.author == Turn.Author.EXPLAINER
    question = None if opening else previous_explainer_turn(conversation, turn)
    item = protocol.items[question.check_item] if question is not None and question.check_item else None
    chosen, graded = check_graded(turn.text, item, protocol, lang) if item else (None, None)
    own = latest_snapshot(conversation)
    state, snapshot = (own.state if own else None), None
    if not opening and mode in (True, "mismatched"):
        updates = [c for c in calls if c["purpose"] == UPDATE]
        if not updates:  # one attempt (and at most one repair): a failure falls back to the rules
            return _update_plan(turn, question, item, chosen, graded, own.state, protocol, lang, llm, endpoint,
                                structured, f"{structured} ({source})")
        parsed, reason = _valid_update(updates[-1], concepts)
        repair = _repair_strategy(updates, parsed is None)
        if repair is not None:
            return _update_plan(turn, question, item, chosen, graded, own.state, protocol, lang, llm, endpoint,
                                repair, f"repair after an unusable answer ({reason})"[:300],
                                repair_of=(updates[-1]["response"] or {}).get("text") or "", problem=reason)
        state, source_ = _updated(own.state, updates[-1], concepts, question, item, graded)
        snapshot = (state, source_)
    policy_state = _policy_state(conversation, mode, state, own.index + 1 if own and snapshot else 0, concepts)
    tools = target_tools(conversation=conversation) if tool_choice != "none" else None
    move, check_item = None, ""
    if proactive:
        left, explained, asked = state_of_play(protocol, conversation.turns.all())
        if item is not None and chosen is None:  # not one of the options: answer what they said, ask again
            move, check_item = {"concept": question.concept, "act": "check", "again": True}, question.check_item
        else:
            last_check = (question.concept, graded) if graded is not None else None
            move = next_move(policy_state, concept_order=concepts, checks_left=left, explained=explained,
                             last_check=last_check)
            if move["act"] == "example" and tools is None:
                move = {**move, "act": "analogy"}  # no target to ask: make the concept concrete another way
            if move["act"] == "check":
                check_item = check_item_next(protocol, move["concept"], asked)
    if snapshot is not None:
        snapshot = ({**snapshot[0], "next_goal": {"concept": move["concept"], "act": move["act"]}} if move
                    else snapshot[0], snapshot[1])
    done = [c for c in calls if c["purpose"] == REPLY and c["status"] == LLMCall.Status.OK]
    missed = any((c["response"] or {}).get("auto_missed") for c in done)
    retried = next(((c["response"] or {})["unusable"] for c in done if (c["response"] or {}).get("unusable")), "")
    rounds = [c for c in done if not ((c["response"] or {}).get("auto_missed") or (c["response"] or {}).get("unusable"))]
    exchange, record, earlier = [], [], []
    for c in rounds:
        response = c["response"] or {}
        results = response.get("tool_results") or []
        exchange += tool_exchange_messages(endpoint.provider, response.get("text") or "", results,
                                           [r["result"] for r in results])
        record += results
        if (response.get("text") or "").strip() and response.get("shown", True):
            earlier.append(response["text"].strip())
    # Which round this is: a tool the policy needs (an example asks the target), an optional tool round
    # (`auto`), or the reply itself. A server that ignores `auto` gets a `required` round instead.
    continuing = turn.shown_text if turn.status == Turn.Status.PENDING else ""
    needs_tool = (tools is not None and move is not None and move["act"] in TOOL_ACTS
                  and not any((c["response"] or {}).get("tool_results") for c in rounds))
    choice_now, fallback = "none", ""
    if continuing or tools is None or len(rounds) >= TOOL_ROUNDS_MAX:
        final_round = True
    elif needs_tool:
        final_round = False
        choice_now = "required" if tool_choice == "required" or missed else "auto"
        if missed and tool_choice != "required":
            fallback = "tool_choice auto gave no tool call for an example: asked again with required"
    elif tool_choice == "auto":
        final_round = False
        choice_now = "auto"
    else:
        final_round = True
    model_shown = None if mode is False else policy_state
    history = conversation_history(conversation=conversation, upto=turn)
    if continuing:
        exchange += [{"role": "assistant", "content": continuing}, {"role": "user", "content": CONTINUE_CUE}]
        earlier = []  # the text continued already holds what earlier rounds wrote

    def build_system(material: str) -> str:
        return _reply_system(protocol, arm, lang, material, model_shown, move, check_item, graded, tools, proactive)

    send_tools = tools is not None and (not final_round or bool(record))  # tool messages need their tools
    cue = _move_cue(protocol, move, lang) if move is not None and not continuing else ""
    if retried and not continuing:
        cue = f"{cue} (Your last attempt could not be used: {retried}. Write a new message in your own words.)".strip()
    # counted too: the cue, and the tools' definitions, which the server renders into the prompt
    unseen = [{"role": "user", "content": f"{OPENING_CUE}\n\n{cue}"}]
    if send_tools:
        unseen.append({"role": "system", "content": json.dumps(tools.definitions(), ensure_ascii=False)})
    messages, trimmed = fit_prompt(build_system=build_system, material=arm_material(conversation=conversation),
                                   history=history, llm=llm, extra=exchange + unseen)
    if len(messages) == 1 or messages[1]["role"] != "user":
        messages.insert(1, {"role": "user", "content": OPENING_CUE})  # the explainer speaks first
    if cue:
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last] = {**messages[last], "content": f"{messages[last]['content']}\n\n{cue}"}
    params = dict(llm["params"])
    if retried and not continuing:  # the same prompt at the same temperature tends to give the same text
        params["temperature"] = max(float(params.get("temperature") or 0), RETRY_TEMPERATURE)
    if send_tools:
        params["tool_choice"] = choice_now  # the provider layer writes it in Anthropic's form
    request = _request(endpoint, llm, messages + exchange, OPENING if opening else REPLY, params=params,
                       tools=tools.definitions() if send_tools else None)
    return Plan(REPLY, request, streams=choice_now != "required", move=move, check_item=check_item,
                snapshot=snapshot, graded=(question.pk, graded) if graded is not None else None,
                earlier_text="\n\n".join(earlier), tool_record=record, tools=tools, final_round=final_round,
                expect_tool=needs_tool and choice_now == "auto", continuing=continuing, trimmed=trimmed,
                retried_unusable=bool(retried),
                strategy={"tool_choice": choice_now if send_tools else "", "fallback_reason": fallback})


def _repair_strategy(updates: list[dict], unusable: bool) -> str | None:
    """The output format of the one repair of a learner-model update, or None (use it, or fall back to rules).

    A server that refused the format (400) is asked again with the next weaker one; an answer that came
    back but could not be used is asked again once when the format was not enforced by a schema.
    """
    if len(updates) != 1 or not unusable:
        return None
    first = updates[0]
    sent = first["structured_output"] or "json_schema"
    if first["status"] == LLMCall.Status.ERROR:
        return _weaker(sent) if first["error_kind"] == "bad_request" else None
    return sent if sent != "json_schema" else None


def _update_plan(turn, question, item, chosen, graded, state, protocol, lang, llm, endpoint, structured: str,
                 why: str, repair_of: str | None = None, problem: str = "") -> Plan:
    evidence = {
        "explainer_act": question.act or None if question else None,
        "concept": question.concept or None if question else None,
        "check": None if item is None else {
            "item": question.check_item, "question": protocol.text(item["prompt"], lang), "answer": chosen,
            "correct": graded,
        },
    }
    system = "\n\n".join([
        UPDATE_TASK,
        f"<concepts>\n{_concepts_json(protocol, lang)}\n</concepts>",
        f"<learner_model>\n{_model_json(state)}\n</learner_model>",
        f"<evidence>\n{json.dumps(evidence, ensure_ascii=False)}\n</evidence>",
    ])
    said = question.text if question is not None else "(nothing yet)"
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": f"Explainer: {said}\n\nParticipant: {turn.text}"}]
    if repair_of is not None:
        messages += [{"role": "assistant", "content": repair_of or "(no answer)"},
                     {"role": "user", "content": f"That answer could not be used: {problem}. Return the whole "
                                                 "learner model again as one JSON object that follows the schema."}]
    concepts = [c["id"] for c in protocol.spec["concepts"]]
    request = _request(endpoint, llm, messages, UPDATE, params=_structured_params(llm), structured=structured,
                       response_schema={"name": "learner_model", "schema": update_schema(concepts)})
    fallback = why if repair_of is not None or structured != "json_schema" else ""
    return Plan(UPDATE, request, strategy={"structured_output": structured, "fallback_reason": fallback[:300]})


def _reply_system(protocol, arm, lang, material, state, move, check_item, graded, tools, proactive) -> str:
    """The reply's system prompt. What stays the same for the whole conversation comes first (the arm's
    instructions, the material, the concepts, the tools, the language) so that servers' prefix caches
    hold it; what changes every turn (the learner model, the next move) comes last."""
    parts = [protocol.text(arm.get("system_prompt"), lang), ROLE_PROACTIVE if proactive else ROLE_ANSWER_ONLY]
    if material:
        parts.append(f"<material>\n{material}\n</material>")
    parts.append(f"<concepts>\n{_concepts_json(protocol, lang)}\n</concepts>")
    if tools is not None:
        parts.append(f"<tools>\n{TOOLS_NOTE}\n</tools>")
    parts.append(f"Write in {LANGUAGE_NAMES.get(lang, lang)}.")
    if state is not None:
        parts.append(f"<learner_model>\n{_model_brief(state)}\n</learner_model>\n{MODEL_NOTE}")
    if move is not None:
        concept = next((c for c in protocol.spec["concepts"] if c["id"] == move["concept"]), None)
        info = {"act": move["act"]}
        if concept is not None:
            info.update(concept=concept["id"], label=protocol.text(concept["label"], lang),
                        description=protocol.text(concept["description"], lang))
        if graded is not None:
            info["previous_answer"] = "right" if graded else "wrong"
        if check_item:
            item = protocol.items[check_item]
            info["question"] = protocol.text(item["prompt"], lang)
            rows = case_rows(protocol, item, lang)
            if rows:
                info["case"] = {label: value for label, value in rows}
            info["options"] = [{"id": letter, "text": protocol.text(o["text"], lang)} for letter, o in option_letters(item)]
            if move.get("again"):
                info["again"] = "their last message did not pick an option: answer it briefly, then ask again"
        parts.append(f"<next_move>\n{json.dumps(info, ensure_ascii=False)}\n</next_move>\n{ACT_INSTRUCTIONS[move['act']]}")
    return "\n\n".join(p.strip() for p in parts if p)


def tool_round_results(plan: Plan, result: LLMResult) -> list[dict] | None:
    """Run the tool calls of an intermediate round; None when the result is the reply itself."""
    if plan.purpose != REPLY or plan.final_round or plan.tools is None or not result.tool_calls:
        return None
    out = []
    for call in result.tool_calls:
        value, refused = plan.tools.run(call)
        out.append({"id": call["id"], "name": call["name"], "arguments": call["arguments"], "result": value,
                    "refused": refused})
    return out


def agentic_step(plan: Plan, result: LLMResult) -> Step:
    """What a successful call of a turn leads to: the learner-model update, a tool round (its calls run here,
    on the target, with no network), an `auto` round that gave no tool call where the policy needs one (the
    next round asks with `required`), a reply that cannot be shown (asked once more, told why; the second
    time the move's templated text is sent instead), or the reply."""
    if plan.expect_tool and not result.tool_calls:
        return Step(reply=False, response={**result.response, "auto_missed": True, "shown": plan.streams},
                    reset=plan.streams and bool(result.text))
    tool_results = tool_round_results(plan, result)
    if plan.purpose != REPLY or tool_results is not None:
        response = {**result.response, "shown": plan.streams}
        if tool_results is not None:
            response["tool_results"] = tool_results
        return Step(reply=False, response=response)
    unusable = "" if plan.continuing else reply_unusable(result.text, messages=plan.request.messages,
                                                         instructions=move_instructions(plan.move))
    if unusable and not plan.retried_unusable:
        return Step(reply=False, response={**result.response, "unusable": unusable, "shown": plan.streams},
                    fallback_reason=f"{unusable}: asked once more", reset=True)
    if unusable:
        return Step(reply=True, fallback_reason=f"{unusable} again: the move's templated text was sent instead", text="")
    return Step(reply=True)


def agentic_reply(*, plan: Plan, turn: Turn, result: LLMResult, conversation: Conversation) -> Reply:
    """The explainer's turn (the opening, or a reply), with the check answer graded and the snapshot."""
    protocol = Protocol(conversation.version.spec)
    lang = conversation.language
    text = "\n\n".join(t for t in (plan.earlier_text, (result.text or "").strip()) if t)
    with translation.override(lang):
        if plan.check_item and protocol.text(protocol.items[plan.check_item]["prompt"], lang) not in text:
            # the answer to a check is read against its options: the question is asked as written, always
            text = f"{text}\n\n{check_question_text(protocol, plan.check_item, lang)}".strip()
        if not text:
            text = move_text(protocol, lang, plan.move, plan.check_item) if plan.move else _(
                "This message could not be answered.")
    move = plan.move or {}
    return Reply(text=text, act=move.get("act") or "", concept=move.get("concept") or "", check_item=plan.check_item,
                 tool_calls=plan.tool_record, graded=plan.graded, snapshot=plan.snapshot,
                 completes=move.get("act") == "summary")


# --------------------------------------------------------------------------- the end of the step


def _final_state(conversation: Conversation) -> dict | None:
    """The model the explainer acted on at the end (None: the arm keeps none)."""
    _proactive, mode = agentic_options(Protocol(conversation.version.spec).arms[conversation.arm])
    if mode is False:
        return None
    if mode == "mismatched" and conversation.learner_model_from_id:
        donor = LearnerModelSnapshot.objects.filter(conversation_id=conversation.learner_model_from_id).order_by("-index").first()
        if donor is not None:
            return donor.state
    latest = latest_snapshot(conversation)
    return latest.state if latest else None


def agentic_finish(*, conversation: Conversation, post_items: list[dict]) -> Finish:
    """The rule-based predictions and note, written at once; the worker then asks the language model for its
    own versions (source `llm`) while the participant takes the post-test: they never wait on a provider."""
    protocol = Protocol(conversation.version.spec)
    state = _final_state(conversation)
    checks, right = checks_so_far(conversation)
    predictions = predictions_by_rules(post_items, state, conversation.version.target_keys) if state is not None else []
    return Finish(predictions=predictions, wrapup=True,
                  note=meeting_note_by_template(protocol, conversation.language, state, checks=checks, right=right))


def wrapup_plan(*, conversation: Conversation, arm: dict, endpoint: Endpoint, made: list[tuple[str, str]]) -> Plan | None:
    """The next end-of-step call (the post-test predictions, then the note), or None when both are made.

    `made`: (purpose, fallback reason) of the end-of-step calls made so far. A call made is not made again,
    whatever its outcome, except a first note that could not be used: it is asked for once more, told why.
    """
    done = {purpose for purpose, _why in made}
    unusable = [why for purpose, why in made if purpose == NOTE and why]
    if len(unusable) == 1 and sum(1 for purpose, _why in made if purpose == NOTE) == 1:
        done.discard(NOTE)
    retry_note = unusable[0] if unusable and NOTE not in done else ""
    protocol = Protocol(conversation.version.spec)
    lang = conversation.language
    llm = arm["llm"]
    state = _final_state(conversation)
    model = f"<learner_model>\n{_model_brief(state)}\n</learner_model>" if state is not None else ""
    concepts = f"<concepts>\n{_concepts_json(protocol, lang)}\n</concepts>"
    item_ids = list(conversation.predictions.order_by("item_id").values_list("item_id", flat=True))
    if PREDICTION not in done and state is not None and item_ids:
        # the items' questions and options, never a predict item's input or any key
        items = [{"id": i, "concept": protocol.items[i].get("concept"), "kind": protocol.items[i]["kind"],
                  "question": protocol.text(protocol.items[i]["prompt"], lang),
                  "options": [protocol.text(o["text"], lang) for o in protocol.items[i].get("options") or []]}
                 for i in item_ids]
        system = "\n\n".join([PREDICTION_TASK, concepts, model,
                              f"<post_test>\n{json.dumps(items, ensure_ascii=False, indent=1)}\n</post_test>"])
        entry = {"type": "object", "properties": {"p_correct": {"type": "number"}}, "required": ["p_correct"],
                 "additionalProperties": False}
        schema = {"type": "object", "required": ["items"], "additionalProperties": False, "properties": {
            "items": {"type": "object", "properties": {i: entry for i in item_ids}, "required": item_ids,
                      "additionalProperties": False}}}
        messages = [{"role": "system", "content": system}, {"role": "user", "content": "Give the predictions now."}]
        _choice, structured, source = endpoint_strategy(version=conversation.version, arm=arm)
        return Plan(PREDICTION, _request(endpoint, llm, messages, PREDICTION, params=_structured_params(llm),
                                         structured=structured,
                                         response_schema={"name": "posttest_predictions", "schema": schema}),
                    strategy={"structured_output": structured,
                              "fallback_reason": "" if structured == "json_schema" else f"{structured} ({source})"})
    if NOTE not in done:
        system = "\n\n".join(p for p in [NOTE_TASK, concepts, f"Write in {LANGUAGE_NAMES.get(lang, lang)}.",
                                         "<meeting_note_request/>", model] if p)
        last = conversation.turns.order_by("-id").first()
        history = conversation_history(conversation=conversation, upto=last) if last else []
        ask = ("Write the note now: three to five sentences addressed to me as 'you', no lists, no numbers, "
               "nothing from your instructions.")
        params = dict(llm["params"])
        if retry_note:
            ask += f" (Your last note could not be used: {retry_note.split(':')[0]}. Write a new one in your own words.)"
            # like a reply's retry: the same prompt at the same temperature tends to give the same text
            params["temperature"] = max(float(params.get("temperature") or 0), RETRY_TEMPERATURE)
        cue = {"role": "user", "content": ask}
        messages, trimmed = fit_prompt(build_system=lambda _material: system, material="", history=history,
                                       llm=llm, extra=[cue])
        return Plan(NOTE, _request(endpoint, llm, messages + [cue], NOTE, params=params), trimmed=trimmed)
    return None


def wrapup_result(*, plan: Plan, conversation: Conversation, result: LLMResult) -> Wrapup:
    """What the language model gave that can be used; the rule-based versions stay for the rest."""
    if plan.purpose == NOTE:
        note = (result.text or "").strip()
        unusable = reply_unusable(note, messages=plan.request.messages, instructions=(NOTE_TASK,))
        if unusable:
            return Wrapup(unusable=f"{unusable}: the templated note stays (asked once more when it is the first)")
        return Wrapup(note=note[:4000])
    items = ((result.parsed or {}).get("items") or {}) if isinstance(result.parsed, dict) else {}
    protocol = Protocol(conversation.version.spec)
    keys = conversation.version.target_keys
    predictions = {}
    for item_id in conversation.predictions.values_list("item_id", flat=True):
        p = (items.get(item_id) or {}).get("p_correct") if isinstance(items, dict) else None
        if isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 1:
            predictions[item_id] = (float(p), predicted_answer(protocol.items[item_id], keys, float(p)))
    return Wrapup(predictions=predictions)


class AgenticArm(Arm):
    kind = "agentic"
    converses = True
    uses_llm = True
    uses_tools = True

    def open(self, *, conversation, arm, pretest):
        return agentic_open(conversation=conversation, arm=arm, pretest=pretest)

    def plan(self, *, turn, conversation, arm, endpoint):
        return agentic_plan(turn=turn, conversation=conversation, arm=arm, endpoint=endpoint)

    def step(self, *, plan, result):
        return agentic_step(plan, result)

    def reply(self, *, plan, turn, result, conversation):
        return agentic_reply(plan=plan, turn=turn, result=result, conversation=conversation)

    def finish(self, *, conversation, arm, post_items):
        return agentic_finish(conversation=conversation, post_items=post_items)

    def wrapup_plan(self, *, conversation, arm, endpoint, made):
        return wrapup_plan(conversation=conversation, arm=arm, endpoint=endpoint, made=made)

    def wrapup_result(self, *, plan, conversation, result):
        return wrapup_result(plan=plan, conversation=conversation, result=result)
