"""Read-only helpers over a normalised study spec (the dict that `studies.spec` produces)."""
from dataclasses import dataclass
from functools import cached_property

from .spec import localize

PHASES = ("pre_test", "post_test", "questionnaire")
FORM_ORDERS = ("AB", "BA")


@dataclass(frozen=True)
class Protocol:
    spec: dict

    @cached_property
    def items(self) -> dict[str, dict]:
        return {item["id"]: item for item in self.spec["items"]}

    @cached_property
    def arms(self) -> dict[str, dict]:
        return {arm["id"]: arm for arm in self.spec["arms"]}

    @property
    def languages(self) -> list[str]:
        return self.spec["languages"]

    def text(self, value: dict | None, lang: str) -> str:
        return localize(value, lang) if value else ""

    def phase_item_ids(self, phase: str, form_order: str) -> list[str]:
        """Return the item ids of a phase, in order, for a participant with this form order."""
        instruments = self.spec["instruments"]
        if phase == "questionnaire":
            return list(instruments.get("questionnaire") or [])
        form = form_order[0] if phase == "pre_test" else form_order[1]
        return list(instruments[phase]["forms"][form])

    @staticmethod
    def phase_form(phase: str, form_order: str) -> str:
        if phase == "questionnaire":
            return ""
        return form_order[0] if phase == "pre_test" else form_order[1]
