"""Which arm kinds this version of the platform can run."""
from .endpoints import llm_endpoint

AVAILABLE_ARM_KINDS = frozenset({"static", "chat", "agentic", "tutor"})
LLM_ARM_KINDS = frozenset({"chat", "agentic"})


def arm_available(arm: dict) -> bool:
    """Return whether the arm can run now (allocation sends people only to such arms).

    A chat or agentic arm needs a language model: a configured provider or the scripted demo model.
    """
    if arm["kind"] not in AVAILABLE_ARM_KINDS:
        return False
    return arm["kind"] not in LLM_ARM_KINDS or llm_endpoint(arm.get("llm")) is not None
