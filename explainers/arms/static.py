"""The `static` arm: the arm's material, read on one page. No explainer, no conversation, unless the arm is
yoked (`options.yoked_to`): then the participant reads another participant's transcript of that arm, once
it has passed its screen (explainers.screening), and the conversation records which one."""
from .base import Arm


class StaticArm(Arm):
    kind = "static"

    def shows_transcripts_of(self, arm: dict) -> str | None:
        return (arm.get("options") or {}).get("yoked_to") or None
