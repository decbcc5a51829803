"""No Prolific id, session id or client address reaches a log line."""
import logging

import pytest

from config.logfilters import RedactQueryString

PID = "5e5e5e5e5e5e5e5e5e5e5e5e"


def test_the_filter_redacts_query_strings_and_access_log_addresses():
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d', ("203.0.113.9:5123", "GET", f"/s/x/?PROLIFIC_PID={PID}", "1.1", 302), None)
    RedactQueryString().filter(record)
    line = record.getMessage()
    assert PID not in line and "203.0.113.9" not in line and "/s/x/?[redacted]" in line


@pytest.mark.django_db
def test_a_whole_run_logs_no_identifier(live_study, enter, step_through, caplog):
    caplog.set_level(logging.DEBUG)
    client, _ = enter(live_study, pid=PID, SESSION_ID="SESSIONSECRET")
    client.get(f"/s/{live_study.study.slug}/post-test/?PROLIFIC_PID={PID}")  # a 302 logged with its URL
    step_through(client, live_study, times=4)
    client.post(f"/s/{live_study.study.slug}/pre-test/", {"item": "x", "answer": "nonsense"})
    handler = logging.getLogger().handlers[0]
    lines = [handler.format(r) for r in caplog.records if all(f.filter(r) for f in handler.filters)]
    assert lines, "the run logged nothing, so this test would prove nothing"
    assert not [line for line in lines if PID in line or "SESSIONSECRET" in line]
