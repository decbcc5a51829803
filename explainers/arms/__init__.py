"""The arm kinds, one module each, registered here by kind; and whether an arm can run where it is launched.

`arm_behaviour(arm)` is the one place that looks at an arm's kind: everything else asks the object it returns
(explainers.arms.base.Arm: the contract, and what the lifecycle in explainers.services asks of it).
docs/arms.md says how to add a kind.
"""
from ..endpoints import llm_endpoint
from .agentic import AgenticArm
from .base import Arm
from .chat import ChatArm
from .static import StaticArm
from .tutor import TutorArm

ARMS: dict[str, Arm] = {arm.kind: arm for arm in (StaticArm(), ChatArm(), AgenticArm(), TutorArm())}
AVAILABLE_ARM_KINDS = frozenset(ARMS)
LLM_ARM_KINDS = frozenset(kind for kind, arm in ARMS.items() if arm.uses_llm)
BILLED_HOSTS = ("api.openai.com", "api.anthropic.com")
NO_ENDPOINT = ("no language model is configured for it here (set arms[].llm.base_url, LLM_BASE_URL or a "
               "provider key where the app and its workers run)")


def arm_behaviour(arm: dict) -> Arm:
    """The behaviour of an arm of a normalised spec, by its kind."""
    return ARMS[arm["kind"]]


def arm_unavailable_reason(arm: dict) -> str | None:
    """Return why the arm cannot run now, or None when it can.

    A chat or agentic arm needs a language model: a configured provider or the scripted demo model.
    """
    if arm["kind"] not in AVAILABLE_ARM_KINDS:
        return f"the arm kind {arm['kind']!r} is not one this platform runs"
    if arm["kind"] in LLM_ARM_KINDS and llm_endpoint(arm.get("llm")) is None:
        return NO_ENDPOINT
    return None


def arm_available(arm: dict) -> bool:
    """Return whether the arm can run now (the checklist and the monitor show it; allocation never skips it)."""
    return arm_unavailable_reason(arm) is None


def arm_billed(arm: dict) -> bool:
    """Whether the arm's model is paid for by the call: not scripted, on the official OpenAI or Anthropic API."""
    endpoint = llm_endpoint(arm.get("llm"))
    if endpoint is None or endpoint.scripted:
        return False
    return not endpoint.base_url or any(host in endpoint.base_url for host in BILLED_HOSTS)


def arm_launch_problems(*, arm: dict, spec: dict, report: dict | None) -> list[str]:
    """Return why the arm cannot run where the study is being launched (empty: it can).

    `report` is the arm's entry of the latest `llm_check` (explainers.probe), or None when none is stored.
    """
    reason = arm_unavailable_reason(arm)
    if reason is not None:
        return [reason]
    if arm["kind"] not in LLM_ARM_KINDS:
        return []
    problems = []
    llm = arm.get("llm") or {}
    if arm_billed(arm) and llm.get("prices") is None:
        problems.append(f"{llm.get('provider')} bills by the token and the study file gives no price for "
                        f"{llm.get('model')!r} (arms[].llm.prices): its cost would be unknown")
    if report is None:
        return problems
    if not report.get("reachable"):
        problems.append("the endpoint did not answer the probe" + _first_error(report))
    elif not report.get("streaming"):
        problems.append("streaming does not work at the endpoint" + _first_error(report, "stream"))
    needs_tools = arm_behaviour(arm).uses_tools and bool(spec.get("target"))
    if needs_tools and report.get("reachable") and not (report.get("tools_auto") or report.get("tools_required")):
        problems.append("the endpoint gives no tool calls under tool_choice auto or required, and the agentic "
                        "arm calls the target's tools")
    return problems


def launch_problems(*, spec: dict, llm_report: dict | None) -> dict[str, list[str]]:
    """Return, per arm that cannot run where the study is being launched, the reasons (empty: all can)."""
    reports = (llm_report or {}).get("arms") or {}
    out = {}
    for arm in spec.get("arms") or []:
        problems = arm_launch_problems(arm=arm, spec=spec, report=reports.get(arm["id"]) if llm_report else None)
        if problems:
            out[arm["id"]] = problems
    return out


def _first_error(report: dict, key: str | None = None) -> str:
    errors = report.get("errors") or {}
    text = errors.get(key) if key else next(iter(errors.values()), None)
    return f" ({text})" if text else ""
