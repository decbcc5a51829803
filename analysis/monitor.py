"""The numbers behind the researcher's live monitor (console pages and the API share them).

`study_monitor` reads a study in a fixed number of queries whatever its size: every count, sum and
percentile is aggregated by the database. On PostgreSQL the percentiles are `percentile_cont`; SQLite
(the demo) has none, so there the query returns the values and Python interpolates them the same way.
docs/console.md says what each number means.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import connection
from django.db.models import Aggregate, Case, Count, F, FloatField, IntegerField, Q, Sum, Value, When
from django.db.models.functions import Coalesce, TruncDay, TruncHour, TruncWeek
from django.utils import timezone

from explainers.arms import arm_unavailable_reason
from explainers.models import LLMCall, Turn
from explainers.periodic import periodic_runs_last
from participants.models import STEP_ORDER, ErasedSpend, PageVisit, Participant, Step
from studies.models import AuditEvent, Study, StudyVersion
from studies.services import ARM_UNAVAILABLE
from studies.spec import localize

# An active participant not seen for this long is counted as dropped out (they may still come back:
# the server keeps their place, and they leave the count when they do).
IDLE_AFTER = timedelta(minutes=30)
# The steps a participant spends time on (consent has no timed page visit: the clock starts after it).
TIMED_STEPS = [s for s in STEP_ORDER if s not in (Step.CONSENT, Step.DONE)]
UNALLOCATED = ""
# Who a participant is: the monitor counts each apart (participant_group).
REAL, PILOT, BOT = "real", "pilot", "bot"
GROUPS = (REAL, PILOT, BOT)
GROUP_LABELS = {REAL: "Participants", PILOT: "Pilots", BOT: "Bots"}

_S = Participant.Status


class PercentileCont(Aggregate):
    """PostgreSQL's continuous percentile: `percentile_cont(q) WITHIN GROUP (ORDER BY expr)`."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        assert 0 <= fraction <= 1
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def participant_group(*, is_simulated: bool, is_pilot: bool) -> str:
    """Return who a participant is on the monitor: a bot (simulated), a pilot, or a real participant."""
    if is_simulated:
        return BOT
    return PILOT if is_pilot else REAL


def study_monitor(*, study: Study) -> dict:
    """Return the monitor's numbers for the whole study (every version), real participants apart from bots and pilots.

    `totals`, `arms`, `steps` and `step_times` are over real participants only (neither simulated nor
    pilot), so they match the participant list filtered to "real participants"; `apart` holds the same
    counts for bots and for pilots, one section each. What erased participants' calls cost (`ErasedSpend`)
    carries no flag and is counted with the real participants.

    `timeline` and `charts` are the same real participants and their LLM calls over time (`_timeline`).

    Queries: 8 on PostgreSQL, 10 on SQLite (the timeline adds 2 and 3 of them), 4 more when the study file
    sets budgets (the budget state), and one more while an arm that could not run keeps the version paused (the audit row that names it).
    """
    now = timezone.now()
    version = _version_shown(study)
    arms = _arms(version)
    groups = _participant_groups(study, now)
    calls = _llm_calls(study)
    turns = _turns(study)
    erased = _erased_spend(study)
    step_times = _step_times(study)
    timeline = _timeline(study, now, list(arms))

    seen = ({g["arm"] for g in groups} | {a for per in (calls, turns) for a, _ in per} | set(erased))
    for arm_id in sorted(seen - set(arms) - {UNALLOCATED}):  # an arm of an older version
        arms[arm_id] = {"id": arm_id, "kind": "", "label": arm_id, "weight": 0, "available": False,
                        "unavailable_reason": "an arm of an older version"}

    counted = {group: _counts(arms, [g for g in groups if g["group"] == group]) for group in GROUPS}
    sections = {}
    for group in GROUPS:
        totals, per_arm, by_step = counted[group]
        arm_rows = _arm_rows(arms, per_arm, {a: c for (a, grp), c in calls.items() if grp == group},
                             {a: t for (a, grp), t in turns.items() if grp == group},
                             erased if group == REAL else {})
        all_calls = sum(r["llm_calls"] for r in arm_rows)
        all_errors = sum(r["llm_errors"] for r in arm_rows)
        sections[group] = {
            "group": group,
            "label": GROUP_LABELS[group],
            "totals": {
                "participants": totals["participants"],
                "active": totals[_S.ACTIVE], "completed": totals[_S.COMPLETED], "declined": totals[_S.DECLINED],
                "withdrawn": totals[_S.WITHDRAWN], "idle": totals["idle"],
                # in progress and not yet allocated: not those who declined or withdrew before allocation
                "unallocated": per_arm[UNALLOCATED][_S.ACTIVE],
                "llm_calls": all_calls, "llm_errors": all_errors,
                "error_rate": all_errors / all_calls if all_calls else None,
                "cost_usd": sum(r["cost_usd"] for r in arm_rows),
                "cost_unknown_calls": sum(r["cost_unknown_calls"] for r in arm_rows),
                "tokens": sum(r["tokens"] for r in arm_rows),
            },
            "arms": arm_rows,
            "steps": [
                {"step": row, "counts": [by_step[row].get(a, 0) for a in [*arms, UNALLOCATED]],
                 "total": by_step[row]["total"]}
                for row in by_step
            ],
            "step_times": [
                {"step": step, "median_s": [_seconds(step_times.get((group, a, step))) for a in arms],
                 "all_s": _seconds(step_times.get((group, None, step))), "n": step_times.get((group, "n", step), 0)}
                for step in TIMED_STEPS
            ],
        }
    real = sections[REAL]
    apart = [sections[g] for g in (BOT, PILOT)]
    unknown_calls = defaultdict(int)  # a model with no price is the study file's problem, whoever called it
    for section in sections.values():
        for row in section["arms"]:
            unknown_calls[row["id"]] += row["cost_unknown_calls"]
    return {
        "generated_at": now,
        "version": None if version is None else {
            "number": version.number, "state": version.state, "launched_at": version.launched_at,
        },
        "idle_after_minutes": int(IDLE_AFTER.total_seconds() // 60),
        "totals": {
            **real["totals"],
            "simulated": sections[BOT]["totals"]["participants"], "pilot": sections[PILOT]["totals"]["participants"],
            "cost_apart_usd": sum(s["totals"]["cost_usd"] for s in apart),
        },
        "warnings": _warnings(study, version, real["arms"], unknown_calls),
        "arms": real["arms"],
        "steps": real["steps"],
        "step_columns": [*arms, UNALLOCATED],
        "step_times": real["step_times"],
        "apart": apart,
        "budget": _budget_state(version),
        "timeline": timeline,
        "charts": _charts(timeline),
    }


def _counts(arms: dict, groups: list[dict]):
    """Sum participant groups into totals, per-arm counts and the step × arm table."""
    totals = defaultdict(int)
    per_arm = {arm_id: defaultdict(int) for arm_id in [*arms, UNALLOCATED]}
    by_step = {row: defaultdict(int) for row in [*STEP_ORDER[:-1], _S.COMPLETED, _S.DECLINED, _S.WITHDRAWN]}
    for g in groups:
        n, arm = g["n"], g["arm"]
        totals["participants"] += n
        totals[g["status"]] += n
        totals["idle"] += g["idle"]
        row = g["step"] if g["status"] == _S.ACTIVE else g["status"]
        by_step[row][arm] += n
        by_step[row]["total"] += n
        counts = per_arm[arm]
        counts["participants"] += n
        counts[g["status"]] += n
        counts["idle"] += g["idle"]
    return totals, per_arm, by_step


def _arm_rows(arms: dict, per_arm: dict, calls: dict, turns: dict, erased: dict) -> list[dict]:
    """One row per arm: allocation share against the weights, completion, dropout, messages, LLM calls, cost."""
    allocated = sum(per_arm[a]["participants"] for a in arms)
    available_weight = sum(a["weight"] for a in arms.values() if a["available"])
    rows = []
    for arm_id, arm in arms.items():
        counts, call, turn = per_arm[arm_id], calls.get(arm_id, {}), turns.get(arm_id, {})
        gone = erased.get(arm_id, {})
        cost = float((call.get("cost") or 0) + (gone.get("cost") or 0))
        cost_unknown = call.get("cost_unknown") or 0
        n = counts["participants"]
        expected = arm["weight"] / available_weight if arm["available"] and available_weight else 0.0
        dropped = counts[_S.WITHDRAWN] + counts["idle"]
        n_calls = call.get("calls", 0)
        rows.append({
            **arm,
            "participants": n,
            "share": n / allocated if allocated else None,
            "expected_share": expected,
            "expected_n": expected * allocated,
            "active": counts[_S.ACTIVE],
            "completed": counts[_S.COMPLETED],
            "withdrawn": counts[_S.WITHDRAWN],
            "idle": counts["idle"],
            "completion_rate": counts[_S.COMPLETED] / n if n else None,
            "dropout_rate": dropped / n if n else None,
            "turns": turn.get("turns", 0),
            "failed_turns": turn.get("failed", 0),
            "llm_calls": n_calls,
            "llm_errors": call.get("errors", 0),
            "error_rate": call.get("errors", 0) / n_calls if n_calls else None,
            "ttft_p50_ms": call.get("ttft_p50"),
            "ttft_p95_ms": call.get("ttft_p95"),
            "tokens": (call.get("input_tokens") or 0) + (call.get("output_tokens") or 0) + (gone.get("tokens") or 0),
            "cost_usd": cost,
            "cost_unknown_calls": cost_unknown,  # calls with no price known: the cost above leaves them out
            "erased_cost_usd": float(gone.get("cost") or 0),
            "cost_per_completer_usd": cost / counts[_S.COMPLETED] if counts[_S.COMPLETED] else None,
        })
    return rows


def _seconds(ms):
    return None if ms is None else ms / 1000


# --- the queries ----------------------------------------------------------------------------------


def _version_shown(study: Study) -> StudyVersion | None:
    """The open (live or paused) version; else the last launched; else the latest draft."""
    rank = Case(
        When(state__in=[StudyVersion.State.LIVE, StudyVersion.State.PAUSED], then=Value(0)),
        When(state=StudyVersion.State.CLOSED, then=Value(1)),
        default=Value(2), output_field=IntegerField(),
    )
    return (
        StudyVersion.objects.filter(study=study).annotate(rank=rank).order_by("rank", "-number")
        .only("number", "state", "launched_at", "spec", "state_reason", "launch_waivers").first()
    )


def _arms(version: StudyVersion | None) -> dict[str, dict]:
    if version is None:
        return {}
    languages = version.spec.get("languages") or ["en"]
    lang = "en" if "en" in languages else languages[0]
    return {
        a["id"]: {
            "id": a["id"], "kind": a["kind"], "label": localize(a.get("label"), lang) if a.get("label") else a["id"],
            "weight": int(a.get("weight") or 0), "available": reason is None, "unavailable_reason": reason,
        }
        for a, reason in ((a, arm_unavailable_reason(a)) for a in version.spec.get("arms") or [])
    }


def _warnings(study: Study, version: StudyVersion | None, arm_rows: list[dict], unknown_calls: dict) -> list[dict]:
    """The banners above the numbers: `level` "error" (red) or "warning", and the text."""
    if version is None:
        return []
    out = []
    if version.state == StudyVersion.State.PAUSED and version.state_reason == ARM_UNAVAILABLE:
        event = (AuditEvent.objects.filter(study_slug=study.slug, object_id=str(version.number),
                                           after__reason=ARM_UNAVAILABLE).order_by("-id").only("after").first())
        after = event.after if event is not None else {}
        out.append({"level": "error", "kind": "arm_unavailable_pause", "arm": after.get("arm"),
                    "text": f"The study paused itself: arm {after.get('arm', '?')} cannot run here "
                            f"({after.get('why', 'no language model')}). Nobody was sent to another arm; "
                            f"configure its model, then resume."})
    elif version.state == StudyVersion.State.LIVE:
        for row in arm_rows:
            if row["kind"] and not row["available"] and row["weight"] > 0:
                out.append({"level": "error", "kind": "arm_unavailable", "arm": row["id"],
                            "text": f"Arm {row['id']} cannot run here ({row['unavailable_reason']}): the study "
                                    f"pauses at the next allocation."})
    for arm_id, reasons in (version.launch_waivers or {}).items():
        out.append({"level": "warning", "kind": "waiver", "arm": arm_id,
                    "text": f"Arm {arm_id} was launched anyway: {'; '.join(reasons)}."})
    for row in arm_rows:
        if unknown_calls.get(row["id"]):
            out.append({"level": "warning", "kind": "cost_unknown", "arm": row["id"],
                        "text": f"cost unknown for arm {row['id']}: {unknown_calls[row['id']]} calls "
                                f"(no price for its model in the study file)"})
    return out


def _participant_groups(study: Study, now) -> list[dict]:
    rows = list(
        Participant.objects.filter(study=study)
        .values("arm", "step", "status", "is_simulated", "is_pilot")
        .annotate(n=Count("id"), idle=Count("id", filter=Q(status=_S.ACTIVE, last_seen_at__lt=now - IDLE_AFTER)))
        .order_by()
    )
    for row in rows:
        row["group"] = participant_group(is_simulated=row["is_simulated"], is_pilot=row["is_pilot"])
    return rows


# The flags of the participant behind a turn's conversation; a conversation no participant holds counts as
# real (NULL flags are coalesced in the query, so the database groups them with the real ones).
_SIMULATED, _PILOT = "conversation__participant__is_simulated", "conversation__participant__is_pilot"


def _flag(path: str):
    return Coalesce(F(path), Value(False))


def _group_of(is_simulated, is_pilot) -> str:
    return participant_group(is_simulated=bool(is_simulated), is_pilot=bool(is_pilot))


def _llm_calls(study: Study) -> dict[tuple[str, str], dict]:
    """Per (arm, group): calls, errors, tokens, cost, and TTFT p50/p95 over the calls that succeeded."""
    calls = LLMCall.objects.filter(turn__conversation__version__study=study)
    ok = Q(status=LLMCall.Status.OK, ttft_ms__isnull=False)
    percentiles = {}
    if connection.vendor == "postgresql":
        percentiles = {
            "ttft_p50": PercentileCont("ttft_ms", 0.5, filter=ok),
            "ttft_p95": PercentileCont("ttft_ms", 0.95, filter=ok),
        }
    rows = (
        calls.values(arm_id=F("turn__conversation__arm"), simulated=_flag(f"turn__{_SIMULATED}"),
                pilot=_flag(f"turn__{_PILOT}"))
        .annotate(
            calls=Count("id"), errors=Count("id", filter=Q(status=LLMCall.Status.ERROR)),
            input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), cost=Sum("cost_usd"),
            cost_unknown=Count("id", filter=Q(status=LLMCall.Status.OK, scripted=False, cost_usd__isnull=True)),
            **percentiles,
        )
        .order_by()
    )
    out = _by_arm_and_group(rows)
    if not percentiles:  # SQLite: one more query for the values, interpolated here
        values = defaultdict(list)
        for arm_id, simulated, pilot, ttft in calls.filter(ok).values_list(
                "turn__conversation__arm", f"turn__{_SIMULATED}", f"turn__{_PILOT}", "ttft_ms").order_by():
            values[(arm_id, _group_of(simulated, pilot))].append(ttft)
        for key, row in out.items():
            row["ttft_p50"] = percentile(values[key], 0.5)
            row["ttft_p95"] = percentile(values[key], 0.95)
    return out


def _by_arm_and_group(rows) -> dict[tuple[str, str], dict]:
    """Key rows grouped by arm and participant flags by (arm, group)."""
    return {(row.pop("arm_id"), _group_of(row.pop("simulated"), row.pop("pilot"))): row for row in rows}


def _turns(study: Study) -> dict[tuple[str, str], dict]:
    """Per (arm, group): the participants' messages and the ones whose reply failed."""
    rows = (
        Turn.objects.filter(conversation__version__study=study, author=Turn.Author.PARTICIPANT)
        .values(arm_id=F("conversation__arm"), simulated=_flag(_SIMULATED), pilot=_flag(_PILOT))
        .annotate(turns=Count("id"), failed=Count("id", filter=Q(status=Turn.Status.FAILED)))
        .order_by()
    )
    return _by_arm_and_group(rows)


def _erased_spend(study: Study) -> dict[str, dict]:
    """Per arm, what erased participants' LLM calls cost: their calls are gone, the money was spent."""
    rows = (
        ErasedSpend.objects.filter(version__study=study).values("arm")
        .annotate(cost=Sum("cost_usd"), tokens=Sum("tokens")).order_by()
    )
    return {row.pop("arm"): row for row in rows}


def _step_times(study: Study) -> dict[tuple, float]:
    """Median time (ms) spent on each step, per group and arm (key (group, arm, step)) and per group over all
    arms (key (group, None, step)); the groups are those of participant_group.

    A participant's time on a step is the sum of `server_ms` over the step's submitted page visits (an
    instrument has one page per item), counted only once they have left the step, so a half-done step
    does not pull the median down. (group, "n", step) holds how many participants the median is over.
    """
    visits, participants = PageVisit._meta.db_table, Participant._meta.db_table
    if connection.vendor == "postgresql":
        step = "split_part(v.page, ':', 1)"
    else:
        step = "CASE WHEN instr(v.page, ':') > 0 THEN substr(v.page, 1, instr(v.page, ':') - 1) ELSE v.page END"
    group = (f"CASE WHEN p.is_simulated THEN '{BOT}' WHEN p.is_pilot THEN '{PILOT}' ELSE '{REAL}' END")
    per_participant = f"""
        SELECT {group} AS grp, p.arm AS arm, {step} AS step, SUM(v.server_ms) AS ms
        FROM {visits} v JOIN {participants} p ON p.id = v.participant_id
        WHERE p.study_id = %s AND v.server_ms IS NOT NULL AND p.step <> {step}
        GROUP BY v.participant_id, p.arm, p.is_simulated, p.is_pilot, {step}
    """
    out: dict[tuple, float] = {}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT grp, arm, step, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), count(*), GROUPING(arm)"
                f" FROM ({per_participant}) t GROUP BY GROUPING SETS ((grp, arm, step), (grp, step))",
                [study.pk],
            )
            for grp, arm, step_name, median, n, overall in cursor.fetchall():
                if overall:
                    out[(grp, None, step_name)] = median
                    out[(grp, "n", step_name)] = n
                else:
                    out[(grp, arm, step_name)] = median
            return out
        cursor.execute(per_participant, [study.pk])
        values = defaultdict(list)
        for grp, arm, step_name, ms in cursor.fetchall():
            values[(grp, arm, step_name)].append(ms)
            values[(grp, None, step_name)].append(ms)
    for key, ms in values.items():
        out[key] = percentile(ms, 0.5)
        if key[1] is None:
            out[(key[0], "n", key[2])] = len(ms)
    return out


def _budget_state(version: StudyVersion | None):
    """The version's budgets and how much of each is used, or None when its study file sets none."""
    if version is None:
        return None
    spec = version.spec
    if not (spec.get("budget") or any(a.get("budget") for a in spec.get("arms") or [])):
        return None
    from participants.selectors import study_budget_state

    return study_budget_state(version=version)


# --- over time: the charts ------------------------------------------------------------------------

# The bin of the timeline from the study's age: hours for two days, days for 90, weeks after that.
_BINS = (
    (timedelta(days=2), "hour", TruncHour, timedelta(hours=1)),
    (timedelta(days=90), "day", TruncDay, timedelta(days=1)),
    (None, "week", TruncWeek, timedelta(weeks=1)),
)


MAX_BINS = 200


def _bin_unit(study: Study, now):
    age = now - study.created_at
    return next((unit, trunc, step) for limit, unit, trunc, step in _BINS if limit is None or age <= limit)


def _timeline(study: Study, now, arm_ids: list[str]) -> dict:
    """Real participants and their LLM calls per arm and time bin (UTC), counted by the database.

    Per arm: `allocated`, `completed` and `dropped` are cumulative counts at the end of each bin (allocated
    at `allocated_at`, completed at `completed_at`, dropped out — withdrew, or idle for IDLE_AFTER — at
    `last_seen_at`, as the table counts them); `ttft_p50_ms` is the median time to the first token of the bin's
    successful calls (None without one), `llm_calls` and `llm_errors` the bin's calls and errors (by `started_at`).

    Queries: 2 on PostgreSQL (the participants' three counts in one UNION, the LLM calls), 3 on SQLite (the
    TTFT values, interpolated here as in `_llm_calls`).
    """
    unit, trunc, step = _bin_unit(study, now)
    real = Participant.objects.filter(study=study, is_simulated=False, is_pilot=False).exclude(arm=UNALLOCATED)

    def counted(kind: str, field: str, condition: Q):
        return (real.filter(condition, **{f"{field}__isnull": False})
                .values("arm", bin=trunc(field, tzinfo=dt_timezone.utc), kind=Value(kind))
                .annotate(n=Count("id")).order_by())

    dropped = Q(status=_S.WITHDRAWN) | Q(status=_S.ACTIVE, last_seen_at__lt=now - IDLE_AFTER)
    people = counted("allocated", "allocated_at", Q()).union(
        counted("completed", "completed_at", Q(status=_S.COMPLETED)),
        counted("dropped", "last_seen_at", dropped), all=True)
    counts = {(row["kind"], row["arm"], _utc(row["bin"])): row["n"] for row in people}

    ok = Q(status=LLMCall.Status.OK, ttft_ms__isnull=False)
    calls = (LLMCall.objects.filter(turn__conversation__version__study=study)
             .alias(simulated=_flag(f"turn__{_SIMULATED}"), pilot=_flag(f"turn__{_PILOT}"))
             .filter(simulated=False, pilot=False))
    postgres = connection.vendor == "postgresql"
    per_bin = {}
    for row in (calls.values(arm_id=F("turn__conversation__arm"), bin=trunc("started_at", tzinfo=dt_timezone.utc))
                .annotate(calls=Count("id"), errors=Count("id", filter=Q(status=LLMCall.Status.ERROR)),
                          **({"ttft_p50": PercentileCont("ttft_ms", 0.5, filter=ok)} if postgres else {}))
                .order_by()):
        per_bin[(row["arm_id"], _utc(row["bin"]))] = row
    if not postgres:  # SQLite: the values, interpolated here
        values = defaultdict(list)
        for arm_id, when, ttft in (calls.filter(ok).values_list("turn__conversation__arm",
                                   trunc("started_at", tzinfo=dt_timezone.utc), "ttft_ms").order_by()):
            values[(arm_id, _utc(when))].append(ttft)
        for key, row in per_bin.items():
            row["ttft_p50"] = percentile(values[key], 0.5)

    arms = [*arm_ids, *sorted(({a for _, a, _ in counts} | {a for a, _ in per_bin}) - set(arm_ids))]
    seen = [when for *_, when in counts] + [when for _, when in per_bin]
    if not seen:
        return {"unit": unit, "bins": [], "arms": arms}
    end = max(_utc(_truncate(now, unit)), max(seen))
    when = max(min(seen), end - (MAX_BINS - 1) * step)  # the earliest bins are left off past MAX_BINS
    bins = []
    while when <= end:
        bins.append(when)
        when += step
    series = {"unit": unit, "bins": bins, "arms": arms}
    for kind in ("allocated", "completed", "dropped"):
        series[kind] = {}
        for arm in arms:
            total = sum(n for (k, a, at), n in counts.items() if k == kind and a == arm and at < bins[0])
            cumulative = []
            for when in bins:
                total += counts.get((kind, arm, when), 0)
                cumulative.append(total)
            series[kind][arm] = cumulative
    llm_arms = [a for a in arms if any(k[0] == a for k in per_bin)]
    for key, field, empty in (("llm_calls", "calls", 0), ("llm_errors", "errors", 0),
                              ("ttft_p50_ms", "ttft_p50", None)):
        series[key] = {a: [per_bin.get((a, when), {}).get(field, empty) for when in bins] for a in llm_arms}
    return series


def _utc(when):
    return when.astimezone(dt_timezone.utc) if when.tzinfo else when.replace(tzinfo=dt_timezone.utc)


def _truncate(when, unit: str):
    when = when.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)
    if unit == "hour":
        return when
    when = when.replace(hour=0)
    return when if unit == "day" else when - timedelta(days=when.weekday())


def _bin_label(when, unit: str) -> str:
    return when.strftime("%d %b %H:00") if unit == "hour" else when.strftime("%d %b")


CHARTS = (
    ("allocated", "Arrivals (allocated), cumulative", "participants"),
    ("completed", "Completions, cumulative", "participants"),
    ("dropped", "Dropouts (withdrew or idle), cumulative", "participants"),
    ("ttft_p50_ms", "LLM time to first token, median", "ms"),
    ("llm_errors", "LLM errors per bin", "errors"),
)


def _charts(timeline: dict) -> list[dict]:
    """One SVG line chart per series of the timeline, each with its text alternative (`desc` and a table)."""
    if not timeline["bins"]:
        return []
    from .report import PALETTE

    unit, bins = timeline["unit"], timeline["bins"]
    labels = [_bin_label(when, unit) for when in bins]
    # an arm keeps its colour in every chart
    colors = {arm: PALETTE[i % len(PALETTE)] for i, arm in enumerate(timeline["arms"])}
    out = []
    for key, title, y_label in CHARTS:
        series = timeline.get(key) or {}
        if not series:
            continue
        title = f"{title} ({'per ' + unit if key.startswith('llm') or key == 'ttft_p50_ms' else 'by ' + unit}, UTC)"
        out.append({
            "key": key, "title": title, "y_label": y_label, "labels": labels,
            "rows": [{"arm": arm, "values": values} for arm, values in series.items()],
            "svg": line_chart_svg(title, labels, series, y_label=y_label, x_label=f"{unit} (UTC)", colors=colors),
        })
    return out


def line_chart_svg(title: str, labels: list[str], series: dict[str, list], *, y_label: str, x_label: str,
                   colors: dict[str, str] | None = None) -> str:
    """A line per arm over the bins (a gap where a value is None), drawn with the report's plot box."""
    from .report import PALETTE, _nice, _Svg

    colors = colors or {arm: PALETTE[i % len(PALETTE)] for i, arm in enumerate(series)}
    values = [v for vs in series.values() for v in vs if v is not None]
    lo, hi, ticks, digits = _nice(0, max([1, *values]))
    if all(float(t).is_integer() for t in ticks):
        digits = 0
    width = max(340, min(720, 60 + 28 * len(labels)))
    legend, x, line = [], 16.0, 0
    for arm in series:
        name = arm if len(arm) <= 24 else arm[:23] + "…"
        advance = 26 + len(name) * 6.2
        if x + advance > width - 8 and x > 16:
            x, line = 16.0, line + 1
        legend.append((x, line, name, colors[arm]))
        x += advance
    top = 30 + 14 * (line + 1) + 4
    svg = _Svg(width, 230 + top, title, top=top, bottom=50, inset=8)
    svg.set_y(lo, hi)
    svg.set_x(0, max(1, len(labels) - 1))
    svg.y_axis(ticks, y_label, digits=digits)
    svg.axis_line(svg.x0, svg.y0, svg.x1, svg.y0)
    every = max(1, math.ceil(len(labels) / max(1, (svg.x1 - svg.x0) // 70)))
    for i, label in enumerate(labels):
        tick = svg.x(i)
        svg.axis_line(tick, svg.y0, tick, svg.y0 + 4)
        if i % every == 0:
            svg.axis_text(tick, svg.y0 + 16, label, size=10)
    svg.axis_text((svg.x0 + svg.x1) / 2, svg.h - 8, x_label)
    for x, line, name, color in legend:
        y = 34 + 14 * line
        svg.axis_line(x, y - 4, x + 14, y - 4, color=color, width=2)
        svg.axis_text(x + 18, y, name, anchor="start", size=10)
    described = []
    for arm, vs in series.items():
        color = colors[arm]
        run: list[str] = []
        for j, v in enumerate([*vs, None]):
            if v is not None:
                run.append(f"{svg.x(j):.1f},{svg.y(v):.1f}")
                svg.circle(svg.x(j), svg.y(v), 2.5, color, title=f"{arm}, {labels[j]}: {_fmt(v)}")
            elif run:
                svg.add(f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" stroke-width="1.5"/>')
                run = []
        shown = [(labels[j], v) for j, v in enumerate(vs) if v is not None]
        described.append(f"{arm}: " + (", ".join(f"{at} {_fmt(v)}" for at, v in shown) if shown else "no data"))
    svg.desc = f"{title}; {y_label} by {x_label}. " + "; ".join(described) + "."
    return svg.render()


def _fmt(v) -> str:
    return f"{v:.0f}" if isinstance(v, (int, float)) else str(v)


# --- the scheduler (beat) -------------------------------------------------------------------------

# What each periodic task of CELERY_BEAT_SCHEDULE is called on the monitor, and what stops while it does not run.
SCHEDULED = {
    "turns-sweep": ("the sweeper", "replies whose worker died will not be retried"),
    "budgets-check": ("the budget check", "the studies' cost caps are not checked"),
    "pid-hashes-expire": ("the PID-hash retention", "PID hashes are kept past their retention"),
}
LATE_PERIODS = 4    # a task is late once this many of its periods have passed without a run ...
LATE_MIN_S = 60     # ... and at least this long (beat's own tick, a busy database)
WATCHED_MAX_S = 3600  # tasks run at most this far apart turn the monitor red; a daily one is only shown


def scheduler_status(*, now: float | None = None) -> dict:
    """Return when each periodic task last ran, which are late, and the sentence for the red banner.

    Reads one cache round trip (explainers.periodic), no query. A watched task (run at least hourly) is late
    when it has no run recorded or its last is older than LATE_PERIODS periods (at least LATE_MIN_S). A daily
    task is never called late: after a Redis restart without persistence its record comes back only at its
    next run.
    """
    now = time.time() if now is None else now
    last = periodic_runs_last()
    tasks = []
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        every_s = _period_s(entry["schedule"])
        label, consequence = SCHEDULED.get(name, (f"the task {name}", "its periodic work is not done"))
        ran = last.get(entry["task"])
        age_s = None if ran is None else max(0.0, now - ran)
        watched = every_s is not None and every_s <= WATCHED_MAX_S
        late_after_s = max(LATE_PERIODS * every_s, LATE_MIN_S) if watched else None
        tasks.append({
            "name": name, "label": label, "consequence": consequence, "every_s": every_s, "watched": watched,
            "last_run_at": None if ran is None else datetime.fromtimestamp(ran, tz=dt_timezone.utc),
            "age_s": age_s, "ago": "no run recorded" if age_s is None else f"{_duration(age_s)} ago",
            "late": watched and (age_s is None or age_s > late_after_s),
        })
    return {"tasks": tasks, "late": [t["name"] for t in tasks if t["late"]], "text": _scheduler_text(tasks)}


def _scheduler_text(tasks: list[dict]) -> str:
    """The red banner's sentence ('' while every watched task is on time)."""
    watched = [t for t in tasks if t["watched"]]
    late = [t for t in watched if t["late"]]
    if not late:
        return ""
    if len(late) == len(watched):  # nothing ran: the scheduler itself is down (or none was ever started)
        ages = [t["age_s"] for t in watched if t["age_s"] is not None]
        since = (f"has not run for {_minutes(min(ages))}" if ages
                 else "has not run (no run recorded since Redis last started)")
        consequences = " and ".join(t["consequence"] for t in late)
        return f"The scheduler {since}: {consequences}. Run exactly one beat process beside the workers."
    return " ".join(
        f"{t['label'][0].upper()}{t['label'][1:]} has not run "
        f"{'for ' + _minutes(t['age_s']) if t['age_s'] is not None else '(no run recorded)'}: "
        f"{t['consequence']}; see the beat and worker logs." for t in late
    )


def _period_s(schedule) -> float | None:
    """A beat entry's period in seconds (a number or a timedelta); None for a crontab."""
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    if isinstance(schedule, (int, float)):
        return float(schedule)
    run_every = getattr(schedule, "run_every", None)  # celery.schedules.schedule
    return run_every.total_seconds() if isinstance(run_every, timedelta) else None


def _minutes(seconds: float) -> str:
    n = max(1, int(seconds // 60))
    return f"{n} minute{'s' if n != 1 else ''}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 90 * 60:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"
