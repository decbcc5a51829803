"""The target tools of the agentic arm: the explainer may ask the study's own model.

`predict(input)` returns the target's output for an input; `what_if(input, feature, value)` returns the
output before and after one feature changes. Only an `sklearn` target has tools (an `llm` target or none
offers none). The inputs of the pre- and post-test `predict` items are held out: a call on any case near one
of them (studies.heldout: every feature within its tolerance, the rule the validator applies to practice
items) is refused, so the explainer can never look up a test answer, not even by a near miss, and the
refused arguments are not echoed back into the next prompt.
"""
import csv
import io
import json
import statistics
import threading
from dataclasses import dataclass

from studies.heldout import HeldOutRule, held_out_rule, held_out_tests, number_of
from studies.selectors import study_asset_get
from studies.targets import TargetError, target_train

from .models import Conversation

PREDICT, WHAT_IF = "predict", "what_if"
REFUSED = ("refused: this input is one of the study's test cases, or too close to one, which the explainer "
           "may not look up; use a clearly different example")
WITHHELD = "withheld: a test case"

_cache: dict[str, "TargetTools"] = {}  # by the version's sha256: its spec and assets, so never stale
_lock = threading.Lock()


@dataclass(frozen=True)
class TargetTools:
    features: tuple[str, ...]
    held_out: tuple[tuple[str, dict], ...]  # (test item id, input)
    rule: HeldOutRule
    typical: dict  # the median of each feature in the training data: a starting point for examples
    labels: dict   # feature -> label in English (the tools' descriptions)
    target: object  # studies.targets.TrainedTarget

    def definitions(self) -> list[dict]:
        """The tools as LLMRequest.tools (JSON Schema parameters)."""
        features = {f: {"type": "number", "description": self.labels.get(f) or f} for f in self.features}
        case = {"type": "object", "properties": features, "required": list(self.features),
                "additionalProperties": False, "examples": [self.typical]}
        return [
            {"name": PREDICT, "description": "Ask the model itself: return its output for one input.",
             "parameters": {"type": "object", "properties": {"input": case}, "required": ["input"],
                            "additionalProperties": False}},
            {"name": WHAT_IF, "description": "Ask the model what changes when one feature of an input takes another "
                                             "value: return its output before and after.",
             "parameters": {"type": "object", "properties": {
                 "input": case, "feature": {"type": "string", "enum": list(self.features)}, "value": {"type": "number"}},
                 "required": ["input", "feature", "value"], "additionalProperties": False}},
        ]

    def held_out_match(self, case: dict) -> str | None:
        """The id of the test item whose input `case` is near, or None."""
        return self.rule.match(case, list(self.held_out))

    def run(self, call: dict) -> tuple[dict, bool]:
        """Run one tool call; return (result, refused)."""
        name, args = call.get("name"), call.get("arguments") or {}
        case = args.get("input") if isinstance(args.get("input"), dict) else None
        if name not in (PREDICT, WHAT_IF) or case is None:
            return {"error": f"unknown tool or no input: use {PREDICT} or {WHAT_IF} with an input"}, False
        cases = [case]
        if name == WHAT_IF:
            if args.get("feature") not in self.features:
                return {"error": f"feature must be one of: {', '.join(self.features)}"}, False
            cases.append({**case, args["feature"]: args.get("value")})
        if any(self.held_out_match(c) is not None for c in cases):
            return {"refused": REFUSED}, True
        if any(c.get(f) is not None and not isinstance(c.get(f), (bool, str)) and number_of(c.get(f)) is None
               for c in cases for f in self.features):
            return {"error": "every input value must be a finite number"}, False
        try:
            outputs = self.target.predict(cases)
        except TargetError as error:
            return {"error": str(error)}, False
        if name == PREDICT:
            return {"output": outputs[0]}, False
        return {"before": outputs[0], "after": outputs[1]}, False


def held_out_inputs(spec: dict) -> list[dict]:
    """The inputs of every pre- and post-test `predict` item (both forms)."""
    return [case for _, case in held_out_tests(spec)]


def target_tools(*, conversation: Conversation) -> TargetTools | None:
    """The conversation's target tools, or None when the study's target has none. Reads the database."""
    version = conversation.version
    target = version.spec.get("target")
    if not target or target["kind"] != "sklearn":
        return None
    with _lock:
        cached = _cache.get(version.sha256)
    if cached is not None:
        return cached
    asset = study_asset_get(version_id=version.pk, path=target["data"])
    data = bytes(asset.content)
    trained = target_train(target, {target["data"]: data})
    features = tuple(target["features"])
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    typical = {f: statistics.median(float(row[f]) for row in rows) for f in features}
    held_out = tuple(held_out_tests(version.spec))
    rule = held_out_rule(target=target, items=version.spec["items"], rows=rows)
    labels = {f: (target.get("feature_labels", {}).get(f) or {}).get("en", f) for f in features}
    tools = TargetTools(features=features, held_out=held_out, rule=rule, typical=typical, labels=labels,
                        target=trained)
    with _lock:
        _cache[version.sha256] = tools
    return tools


def tool_exchange_messages(provider: str, text: str, calls: list[dict], results: list[dict]) -> list[dict]:
    """One tool round as chat messages in the provider's format: the assistant's calls, then their results.

    A refused call's arguments are replaced, so a held-out input never goes back to the provider.
    """
    shown = [{**c, "arguments": {"input": WITHHELD}} if r.get("refused") else c for c, r in zip(calls, results)]
    if provider == "anthropic":
        content = ([{"type": "text", "text": text}] if text else []) + [
            {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["arguments"]} for c in shown]
        return [{"role": "assistant", "content": content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": c["id"], "content": json.dumps(r)}
                                             for c, r in zip(shown, results)]}]
    return [{"role": "assistant", "content": text or None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
        for c in shown]}] + [{"role": "tool", "tool_call_id": c["id"], "content": json.dumps(r)} for c, r in zip(shown, results)]
