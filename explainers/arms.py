"""Arm policies. This version runs the static arm; chat, agentic and tutor land with their issues."""

AVAILABLE_ARM_KINDS = frozenset({"static"})


def arm_available(arm: dict) -> bool:
    """Return whether this platform can run the arm now (allocation sends people only to such arms)."""
    return arm["kind"] in AVAILABLE_ARM_KINDS
