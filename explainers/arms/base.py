"""The contract every arm kind keeps, and the records it hands to explainers.services to write.

An arm is an object registered by its kind (explainers.arms.ARMS). explainers.services runs the lifecycle
(the conversation's start, a turn's lease and attempts, the stream, every write, the end of the step) and
asks the arm, at each point, what to do:

- `converses`, `uses_llm`, `shows_transcripts_of(arm)`: what the arm needs (a conversation, a provider, the
  screened transcripts of another arm);
- `open(conversation, arm, pretest) -> Opening | None`: how the conversation starts (the learner model before
  it, an opening said at once, or one the worker writes);
- `answer(conversation, arm, turn) -> Reply | None`: an arm that answers in the request (offline) answers here;
  None sends the turn to the worker;
- `plan(turn, conversation, arm, endpoint) -> Plan`: the next provider call of a pending turn;
- `step(plan, result) -> Step`: what a successful call leads to (another call, or the reply);
- `reply(plan, turn, result, conversation) -> Reply`: the reply the last call gives;
- `finish(conversation, arm, post_items) -> Finish | None`: what the explainer leaves at the end of the step;
- `wrapup_plan(...)`, `wrapup_result(...)`: the end-of-step provider calls that may replace it.

Arms read the database (the conversation so far) but never write it: they return `Opening`, `Reply`, `Step`,
`Finish` and `Wrapup`, and explainers.services writes them, in its transactions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..providers import LLMRequest

UPDATE, REPLY, PREDICTION, NOTE = "learner_update", "reply", "posttest_prediction", "meeting_note"


@dataclass
class Plan:
    """The next provider call for a turn, and what saving its outcome needs."""

    purpose: str
    request: LLMRequest
    streams: bool = False                       # text deltas go to the participant
    move: dict | None = None
    check_item: str = ""
    snapshot: tuple[dict, str] | None = None    # (state, source) to store with the reply
    graded: tuple[int, bool] | None = None      # (the check question's turn id, answered right)
    earlier_text: str = ""                      # text the model wrote in earlier tool rounds
    tool_record: list = field(default_factory=list)
    tools: object = None                        # explainers.tools.TargetTools, or None
    final_round: bool = True
    expect_tool: bool = False                   # an `auto` round that should call a tool: none is a fallback cue
    continuing: str = ""                        # the cut-off text this reply continues
    retried_unusable: bool = False              # an earlier round's text could not be shown: no second retry
    strategy: dict = field(default_factory=dict)  # tool_choice, structured_output, fallback_reason (LLMCall)
    trimmed: dict | None = None                 # what was left out to fit the context window (LLMCall)


@dataclass
class Reply:
    """What the explainer says, and what is recorded with it."""

    text: str
    act: str = ""
    concept: str = ""
    check_item: str = ""
    tool_calls: list = field(default_factory=list)
    graded: tuple[int, bool] | None = None      # on the participant's turn: (the check question's turn id, right)
    snapshot: tuple[dict, str] | None = None    # (learner model, source), stored with the participant's turn
    completes: bool = False                     # a summary: nothing is left to teach, the conversation ends


@dataclass
class Opening:
    """How a conversation starts."""

    snapshot: tuple[dict, str] | None = None    # the learner model before the conversation
    borrows_model: bool = False                 # `learner_model: mismatched`: the previous conversation's model
    reply: Reply | None = None                  # said at once (offline)
    pending: bool = False                       # an explainer turn the worker writes


@dataclass
class Step:
    """What one successful provider call of a turn leads to."""

    reply: bool                                 # its text is the reply (else another call is due)
    response: dict | None = None                # what the call's row logs (None: the provider's response)
    fallback_reason: str = ""                   # written on the call's row
    reset: bool = False                         # the participant's page drops the text it showed
    text: str | None = None                     # the reply's text in place of the call's ("": the arm's template)


@dataclass
class Finish:
    """What the explainer leaves at the end of the step, by rule."""

    predictions: list[dict]                     # [{item_id, p_correct, predicted_answer, source}]
    note: str
    wrapup: bool = False                        # the worker then makes the provider's own versions


@dataclass
class Wrapup:
    """What an end-of-step call gave that can be used."""

    note: str | None = None
    predictions: dict = field(default_factory=dict)  # item id -> (p_correct, predicted answer)
    unusable: str = ""                          # why a note could not be used


class Arm:
    """An arm kind's behaviour. The defaults are an arm with no conversation (static material)."""

    kind = ""
    converses = False   # a participant converses with its explainer
    uses_llm = False    # its explainer's replies come from a provider, made by a worker
    uses_tools = False  # its explainer calls the study target's tools (explainers.tools)

    def shows_transcripts_of(self, arm: dict) -> str | None:
        """The id of the arm whose screened transcripts this arm shows (a yoked static arm), or None."""
        return None

    def open(self, *, conversation, arm: dict, pretest: list[tuple[str, float]]) -> Opening | None:
        return None

    def answer(self, *, conversation, arm: dict, turn) -> Reply | None:
        return None

    def plan(self, *, turn, conversation, arm: dict, endpoint) -> Plan:
        raise NotImplementedError(f"the {self.kind} arm makes no provider calls")

    def step(self, *, plan: Plan, result) -> Step:
        return Step(reply=True)

    def reply(self, *, plan: Plan, turn, result, conversation) -> Reply:
        return Reply(text=result.text)

    def finish(self, *, conversation, arm: dict, post_items: list[dict]) -> Finish | None:
        return None

    def wrapup_plan(self, *, conversation, arm: dict, endpoint, made: list[tuple[str, str]]) -> Plan | None:
        return None

    def wrapup_result(self, *, plan: Plan, conversation, result) -> Wrapup:
        return Wrapup()
