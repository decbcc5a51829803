"""The `llm` target: a study can ask people to predict what a language model will say.

When the study is launched, every `predict` item keyed `from_target` is put to the target's model
(temperature 0, structured output), and the answers and the model id as reported are frozen.
"""
import hashlib
import json
import time

from studies.spec import FROM_TARGET, SpecError, StudyFileInvalid

from .endpoints import llm_endpoint
from .providers import LLMRequest, ProviderError, backoff_s, llm_call

ATTEMPTS = 3


def _answer_schema(item: dict) -> dict:
    answer = {"enum": [o["id"] for o in item["options"]]} if item.get("options") else {"type": "number"}
    return {
        "name": "answer",
        "schema": {"type": "object", "properties": {"answer": answer}, "required": ["answer"],
                   "additionalProperties": False},
    }


def _ask(request: LLMRequest):
    """Up to ATTEMPTS calls, waiting between them as a reply's attempts do (providers.backoff_s)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return llm_call(request)
        except ProviderError as error:
            if not error.retryable or attempt == ATTEMPTS:
                raise
            time.sleep(backoff_s(attempt, error.retry_after))


def llm_target_keys(spec: dict, assets: dict[str, bytes]) -> tuple[str, dict, dict]:
    """Ask the target's model for the answer to each `from_target` item; return (sha256, keys, info)."""
    target = spec["target"]
    llm = target["llm"]
    endpoint = llm_endpoint(llm)
    if endpoint is None:
        raise StudyFileInvalid([SpecError("target.llm", "no language model is configured (LLM_BASE_URL, LLM_API_KEY)")])
    keys, models, errors = {}, set(), []
    for i, item in enumerate(spec["items"]):
        if item["kind"] != "predict" or item.get("key") != FROM_TARGET:
            continue
        prompt = target["prompt_template"].format(**item["input"])
        request = LLMRequest(
            provider=endpoint.provider, model=llm["model"], messages=[{"role": "user", "content": prompt}],
            params={**llm["params"], "temperature": 0}, response_schema=_answer_schema(item),
            base_url=endpoint.base_url, timeout_s=llm["timeout_s"],
        )
        try:
            result = _ask(request)
        except ProviderError as error:
            raise StudyFileInvalid([SpecError(f"items[{i}].key", f"the target model did not answer: {error.kind}")]) from None
        answer = (result.parsed or {}).get("answer")
        valid = [o["id"] for o in item["options"]] if item.get("options") else None
        if answer is None or (valid is not None and str(answer) not in valid):
            errors.append(SpecError(f"items[{i}].key", f"the target model answered {answer!r}, not one of the options"))
            continue
        keys[item["id"]] = str(answer) if valid is not None else float(answer)
        models.add(result.model or llm["model"])
    if errors:
        raise StudyFileInvalid(errors)
    info = {"kind": "llm", "model": sorted(models), "provider": endpoint.provider, "scripted": endpoint.scripted,
            "prompt_template": target["prompt_template"]}
    digest = hashlib.sha256(json.dumps({"info": info, "keys": keys, "llm": llm}, sort_keys=True).encode()).hexdigest()
    return digest, keys, info
