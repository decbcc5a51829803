"""Where an arm's language model answers: a configured provider, or the scripted demo model."""
from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class Endpoint:
    provider: str
    base_url: str | None  # None: the SDK's default (api.openai.com, api.anthropic.com)
    scripted: bool        # True: the scripted demo model, not a real language model


def llm_endpoint(llm: dict | None) -> Endpoint | None:
    """Return where this arm's model answers, or None when nothing is configured for it."""
    if not llm:
        return None
    provider = llm["provider"]
    if llm.get("base_url"):
        return Endpoint(provider, llm["base_url"], scripted=False)
    if provider == "openai" and settings.LLM_BASE_URL:
        return Endpoint(provider, settings.LLM_BASE_URL, scripted=False)
    if provider == "openai" and settings.LLM_API_KEY:
        return Endpoint(provider, None, scripted=False)
    if provider == "anthropic" and (settings.ANTHROPIC_BASE_URL or settings.ANTHROPIC_API_KEY):
        return Endpoint(provider, settings.ANTHROPIC_BASE_URL or None, scripted=False)
    if settings.SCRIPTED_LLM_URL:
        url = settings.SCRIPTED_LLM_URL.rstrip("/")
        return Endpoint(provider, f"{url}/v1" if provider == "openai" else url, scripted=True)
    return None
