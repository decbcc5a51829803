"""Shared fixtures: the example study launched from a (possibly edited) copy of its folder."""
import shutil
from pathlib import Path

import pytest
from django.test import Client
from ruamel.yaml import YAML

from studies.services import study_launch, study_version_create
from studies.spec import study_file_read

EXAMPLE = Path(__file__).resolve().parent.parent / "studies" / "examples" / "loan-approval"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(autouse=True)
def _static_files_without_manifest(settings):
    """Tests do not run collectstatic: resolve static files from the source folders."""
    settings.STORAGES = {
        **settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def study_folder(tmp_path):
    """Return a function that copies the example study and applies `edit(data)` to its YAML."""

    def make(edit=None, name="study") -> Path:
        folder = tmp_path / name
        shutil.copytree(EXAMPLE, folder)
        if edit is not None:
            yaml = YAML(typ="rt")
            data = yaml.load((folder / "study.yaml").read_text(encoding="utf-8"))
            edit(data)
            with (folder / "study.yaml").open("w", encoding="utf-8") as out:
                yaml.dump(data, out)
        return folder

    return make


@pytest.fixture
def launch(study_folder):
    """Return a function that loads and launches a (possibly edited) copy of the example study."""

    def make(edit=None):
        version, _ = study_version_create(study_file=study_file_read(study_folder(edit)))
        return study_launch(slug=version.study.slug, number=version.number)

    return make


def static_only(data) -> None:
    """Keep the static arm only, with no minimum reading time."""
    data["arms"] = [a for a in data["arms"] if a["kind"] == "static"]
    data["arms"][0].setdefault("limits", {})["min_seconds"] = 0
    data["allocation"]["block_size"] = 2


@pytest.fixture
def live_study(db, launch):
    """The example study, launched, allocating to its static arm with no minimum reading time."""
    return launch(static_only)


@pytest.fixture
def enter():
    """Return a function that enters a study as a participant through the study link."""

    def make(version, pid="PID0000000000000000000001", client=None, **params):
        client = client or Client()
        query = {"PROLIFIC_PID": pid, "STUDY_ID": "S1", "SESSION_ID": "SESSION1", **params}
        response = client.get(f"/s/{version.study.slug}/", query)
        return client, response

    return make


@pytest.fixture
def step_through():
    """Return a function that submits the participant's current page `times` times (answers from the key)."""
    import random

    from participants.bots import AnswerPolicy, page_parse
    from studies.protocol import Protocol

    def submit(client, version, times=1, policy="key"):
        answers = AnswerPolicy(policy, Protocol(version.spec), version.target_keys, random.Random(0))
        response = None
        for _ in range(times):
            page_response = client.get(f"/s/{version.study.slug}/", follow=True)
            page = page_parse(page_response.content.decode())
            data = {}
            if page.kind == "consent":
                data["choice"] = "accept"
            elif page.kind == "item":
                data = {"item": page.hidden["item"], **answers.answer(page.hidden["item"])}
            elif page.kind not in ("explanation", "debrief"):
                raise AssertionError(f"nothing to submit on a {page.kind!r} page")
            response = client.post(page_response.redirect_chain[-1][0], data)
        return response

    return submit
