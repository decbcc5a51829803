"""Launch a version only where every arm can run: the check that `manage.py study_launch`, the console and the
API make before studies' launch service (studies imports no other app, so the check lives here)."""
from studies.models import StudyVersion
from studies.services import study_launch, study_version_get

from .arms import LLM_ARM_KINDS, launch_problems
from .endpoints import llm_endpoint
from .probe import version_llm_check


class LaunchRefused(Exception):
    """An arm cannot run where the study is launched; `problems` is {arm id: [reasons]}."""

    def __init__(self, version: StudyVersion, problems: dict[str, list[str]], unknown: list[str] = ()):
        self.problems, self.unknown = problems, list(unknown)
        if unknown:
            message = f"--allow names no arm of {version.study.slug} v{version.number}: {', '.join(unknown)}"
        else:
            arms = "; ".join(f"arm {arm}: {', '.join(reasons)}" for arm, reasons in problems.items())
            message = (f"{version.study.slug} v{version.number} cannot be launched here: {arms}. "
                       f"Fix it, or launch anyway with --allow ARM (the checklist and the monitor will say so).")
        super().__init__(message)


def version_launch_problems(*, version: StudyVersion) -> dict[str, list[str]]:
    """Return what stops each arm of the version from running here, probing the endpoints first when no
    `llm_check` report is stored and an LLM arm has an endpoint to probe (a network call: no transaction)."""
    arms = version.spec.get("arms") or []
    probeable = [a for a in arms if a["kind"] in LLM_ARM_KINDS and llm_endpoint(a.get("llm")) is not None]
    if version.llm_report is None and probeable:
        version_llm_check(version=version)
    return launch_problems(spec=version.spec, llm_report=version.llm_report)


def study_launch_checked(*, slug: str, number: int | None = None, actor=None, allow=()) -> StudyVersion:
    """Launch the version (studies' `study_launch`) unless an arm that `allow` does not name cannot run here.

    The arms allowed anyway are stored with their reasons on the version (`launch_waivers`) and the audit row.
    Raises LaunchRefused naming each arm and reason, or StudyStateError / StudyFileInvalid as the launch does.
    """
    version = study_version_get(slug=slug, number=number)
    if version.state != StudyVersion.State.DRAFT:
        return study_launch(slug=slug, number=version.number, actor=actor)  # live: a no-op; else its error
    allow = list(dict.fromkeys(allow or ()))
    unknown = [a for a in allow if a not in {arm["id"] for arm in version.spec.get("arms") or []}]
    if unknown:
        raise LaunchRefused(version, {}, unknown)
    problems = version_launch_problems(version=version)
    refused = {arm: reasons for arm, reasons in problems.items() if arm not in allow}
    if refused:
        raise LaunchRefused(version, refused)
    waivers = {arm: reasons for arm, reasons in problems.items() if arm in allow}
    return study_launch(slug=slug, number=version.number, actor=actor, waivers=waivers)

