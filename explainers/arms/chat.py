"""The `chat` arm: a language model answers the participant's questions. Its prompt is the arm's
instructions and material, then the conversation so far (explainers.prompts.chat_messages); each reply is
one streamed call, and a reply that was cut off can be continued."""
from studies.spec import llm_limits

from ..prompts import CONTINUE_CUE, chat_messages
from ..providers import LLMRequest
from .base import REPLY, Arm, Plan


class ChatArm(Arm):
    kind = "chat"
    converses = True
    uses_llm = True

    def plan(self, *, turn, conversation, arm: dict, endpoint) -> Plan:
        llm = arm["llm"]
        messages, trimmed = chat_messages(conversation=conversation, upto=turn)
        continuing = turn.shown_text
        if continuing:
            messages += [{"role": "assistant", "content": continuing}, {"role": "user", "content": CONTINUE_CUE}]
        request = LLMRequest(provider=endpoint.provider, model=llm["model"], messages=messages,
                             params=dict(llm["params"]), base_url=endpoint.base_url, **llm_limits(llm=llm, kind=REPLY))
        return Plan(REPLY, request, streams=True, continuing=continuing, trimmed=trimmed)
