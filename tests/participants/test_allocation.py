"""Allocation: weighted permuted blocks, safe under concurrency, forms counterbalanced within arm."""
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from conftest import hex_pid
from participants import services
from participants.models import AllocationSequence, Participant, Step

pytestmark = pytest.mark.django_db

ARRIVALS = 300


def three_arms(data, *, weights=(1, 1, 1), block_size=6, when="consent"):
    template = next(a for a in data["arms"] if a["kind"] == "static")
    template["limits"]["min_seconds"] = 0
    data["arms"] = [{**template, "id": f"static_{i}", "weight": w} for i, w in enumerate(weights)]
    data["allocation"]["block_size"] = block_size
    data["allocation"]["when"] = when


def _arrive_and_consent(slug: str, n: int) -> int:
    try:
        participant = services.participant_enter(slug=slug, pid=hex_pid(f"arrival-{n:06d}"))
        return services.participant_consent(participant_id=participant.pk, accept=True).pk
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_300_concurrent_arrivals_end_balanced_within_one_block(launch):
    version = launch(three_arms)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=30) as pool:
        ids = list(pool.map(lambda n: _arrive_and_consent(version.study.slug, n), range(ARRIVALS)))
    elapsed = time.monotonic() - started
    participants = Participant.objects.filter(version=version)
    counts = Counter(participants.values_list("arm", flat=True))
    duplicates = len(ids) - len(set(ids))
    print(f"\n{ARRIVALS} concurrent arrivals in {elapsed:.1f} s: per-arm counts {dict(sorted(counts.items()))}, "
          f"duplicate participants {duplicates}, unallocated {counts.get('', 0)}")
    assert participants.count() == ARRIVALS and duplicates == 0
    assert "" not in counts and sum(counts.values()) == ARRIVALS
    assert max(counts.values()) - min(counts.values()) <= 6  # one block
    sequence = AllocationSequence.objects.get(version=version, stratum="arms")
    assert sequence.total == ARRIVALS and sequence.arm_counts == dict(counts)
    for arm in counts:
        forms = Counter(participants.filter(arm=arm).values_list("form_order", flat=True))
        assert abs(forms["AB"] - forms["BA"]) <= 1, (arm, forms)


def test_an_arm_once_given_never_changes(live_study, enter, step_through):
    client, _ = enter(live_study, pid="p-stays-in-its-arm-00000")
    step_through(client, live_study)
    arm = Participant.objects.get().arm
    with pytest.raises(services.StepError):
        services.participant_consent(participant_id=Participant.objects.get().pk, accept=True)
    step_through(client, live_study, times=5)
    assert Participant.objects.get().arm == arm


def test_weights_are_honoured_in_every_block(launch):
    version = launch(lambda d: three_arms(d, weights=(2, 1, 1), block_size=8))
    for n in range(24):
        _consent_only(version.study.slug, n)
    counts = Counter(Participant.objects.values_list("arm", flat=True))
    assert counts == {"static_0": 12, "static_1": 6, "static_2": 6}


def test_an_arm_that_cannot_run_is_never_skipped_the_study_pauses(launch, settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""  # no language model at all
    version = launch(lambda d: d["arms"][0]["limits"].update(min_seconds=0))
    kinds = {a["kind"] for a in version.spec["arms"]}
    assert kinds == {"static", "chat", "agentic", "tutor"}
    with pytest.raises(services.ArmUnavailable):  # tests/participants/test_arm_unavailable.py has the rest
        _consent_only(version.study.slug, 0)
    assert set(Participant.objects.values_list("arm", flat=True)) == {""}


def test_chat_and_agentic_arms_are_allocated_once_a_language_model_answers(launch, fake_llm):
    version = launch(lambda d: d["arms"][0]["limits"].update(min_seconds=0))
    for n in range(8):
        _consent_only(version.study.slug, n)
    assert set(Participant.objects.values_list("arm", flat=True)) == {"static", "chat", "agentic", "tutor"}


def test_after_pretest_allocation_is_stratified_by_pretest_band(launch, enter, step_through):
    version = launch(lambda d: three_arms(d, when="after_pretest"))
    high, _ = enter(version, pid="knows-it-all-00000000000")
    step_through(high, version)
    participant = Participant.objects.get()
    assert participant.arm == "" and participant.form_order in ("AB", "BA")
    step_through(high, version, times=5, policy="key")
    participant.refresh_from_db()
    assert participant.step == Step.EXPLANATION and participant.arm.startswith("static_")
    assert participant.stratum == "band1"
    low, _ = enter(version, pid="knows-nothing-0000000000")
    step_through(low, version)
    step_through(low, version, times=5, policy="accuracy:0")
    assert Participant.objects.get(pid_hash=services.identifier_hash(hex_pid("knows-nothing-0000000000"))).stratum == "band0"
    strata = set(AllocationSequence.objects.values_list("stratum", flat=True))
    assert {"forms", f"band1:{participant.form_order}"} <= strata


def _consent_only(slug: str, n: int) -> None:
    participant = services.participant_enter(slug=slug, pid=hex_pid(f"serial-{n:06d}"))
    services.participant_consent(participant_id=participant.pk, accept=True)
