"""schemathesis against the generated schema, in-process (WSGI), with an owner's write token on a live study:
no 5xx, every status documented, every answer of the documented type and shape."""
from collections import Counter
from contextlib import contextmanager

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from api_support import chat_history, make_user, no_throttles, token_for  # noqa: F401 - fixtures
from config.wsgi import application
from console.models import Job
from participants.models import Participant

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES = 10  # per operation, on what exists (~27 operations: well under a minute on two cores)
EXAMPLES_ANYWHERE = 3  # and with every path parameter made up (the 404s)


@pytest.fixture
def api_world(db, live_study, enter, no_throttles):  # noqa: F811
    """The live example study with an owner, a participant with a conversation, a finished export and report."""
    study = live_study.study
    owner = make_user("owner", study, "owner")
    make_user("analyst", study, "analyst")
    enter(live_study, pid="PIDSCHEMATHESIS000000001")
    participant = Participant.objects.get(study=study)
    chat_history(participant)
    done = {"state": Job.State.DONE, "progress": 100}
    jobs = {
        "export": Job.objects.create(study=study, kind="export", content=b"PK", content_type="application/zip",
                                     filename="x.zip", size=2, options={"format": "csv"}, **done),
        "report": Job.objects.create(study=study, kind="report", content=b"<html></html>", filename="r.html",
                                     content_type="text/html; charset=utf-8", size=13, **done),
    }
    return {"study": study, "participant": participant, "jobs": jobs, "key": token_for(owner)}


def existing(path: str, world: dict) -> dict:
    """Path parameters that name what exists, so the 200 answers are checked too (the pseudonym only for
    reading: erasing it would leave the transcript nothing to show)."""
    fixed = {}
    if "{slug}" in path:
        fixed["slug"] = world["study"].slug
    if "{job_id}" in path:
        fixed["job_id"] = world["jobs"]["export" if "/exports/" in path else "report"].pk
    if "{pseudonym}" in path and path.endswith("/transcript/"):
        fixed["pseudonym"] = world["participant"].pseudonym
    return fixed


@contextmanager
def in_this_transaction():
    """Call the WSGI app directly, inside the test's transaction: Django must not close the connection at
    the start and end of each request (Django's test client does the same while it runs a request)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def test_the_api_answers_as_its_schema_says(api_world, capsys):
    with in_this_transaction():
        schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
        failures, calls, operations, statuses = check_every_operation(schema, api_world)
    with capsys.disabled():
        print(f"\nschemathesis: {len(operations)} operations, {calls} calls, {len(failures)} failing; "
              f"answers: {dict(sorted(statuses.items()))}")
    assert statuses[200] > 50 and statuses[404] > 10, statuses  # both what exists and what does not was reached
    assert not failures, "\n\n".join(failures)


def check_every_operation(schema, api_world):
    headers = {"Authorization": f"Bearer {api_world['key']}"}
    failures, calls, statuses = [], {"n": 0}, Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    # Reads first, and closing the study last, so the other writes meet a live study.
    operations.sort(key=lambda op: (op.method.lower() != "get", op.path.endswith("/close/")))
    for operation in operations:
        for fixed, examples in ((existing(operation.path, api_world), EXAMPLES), ({}, EXAMPLES_ANYWHERE)):
            @given(case=operation.as_strategy(path_parameters=fixed))
            @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def run(case):
                calls["n"] += 1
                response = case.call_and_validate(headers=headers, checks=CHECKS)
                statuses[response.status_code] += 1

            try:
                run()
            except (Exception, BaseExceptionGroup) as failure:  # noqa: BLE001 - report every operation's failures
                failures.append(f"{operation.label}: {failure}")
    return failures, calls["n"], operations, statuses
