"""The study report: one self-contained HTML file (inline CSS, inline SVG plots, no scripts, no links out).

`report_html(slug=...)` reads the study through `analysis.frames` (the same scope and pseudonyms as the
export), computes the measures of `analysis.measures` and the statistics of `analysis.stats`, draws the
plots as inline SVG (no plotting library) and renders `analysis/report.html`. Used by
`manage.py study_report` and by the Study admin's "Open report" view. Reads only.

Every statistic is guarded: with too few participants per arm the report says "not enough data (n = …)"
instead of failing, and a test that fails numerically says why.
"""
from __future__ import annotations

import html
import math
import numbers
import warnings
from dataclasses import dataclass
from datetime import UTC

from django.template.loader import render_to_string
from django.utils import timezone

from participants.models import STEP_ORDER, Participant

from . import frames
from .export import git_commit

#: Arms need at least this many participants with a pre- and a post-test score to enter a test.
MIN_PER_ARM = 3
#: The item-level model (GEE) needs at least this many participants per arm.
ITEM_MODEL_MIN_PER_ARM = 5
N_BOOT = 2000
SEED = 0
#: The CSP of the admin's report view: the file is self-contained (inline CSS, data: images, no scripts).
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'none'")

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]

MEASURE_LABELS = {
    "pre": ("Pre-test score", "proportion"),
    "post": ("Post-test score", "proportion"),
    "gain": ("Gain (post − pre)", "proportion"),
    "normalized_gain": ("Normalized gain", "(post − pre)/(1 − pre)"),
    "forward_sim_accuracy": ("Forward-simulation accuracy", "proportion"),
    "brier": ("Brier score (confidence)", "lower is better"),
    "ece": ("ECE (confidence)", "lower is better"),
    "time_on_task_s": ("Time on task", "seconds"),
    "turns": ("Turns", "participant messages"),
    "tokens": ("Tokens", "input + output"),
    "cost_usd": ("Cost", "USD"),
    "lm_accuracy": ("Learner-model accuracy", "proportion"),
    "lm_brier": ("Learner-model Brier", "lower is better"),
}


# --- formatting --------------------------------------------------------------------------------


def _nan(value) -> bool:
    try:
        return value is None or math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def fmt(value, digits: int = 3) -> str:
    """A number for the report: fixed digits, "—" for missing, integers without decimals."""
    if _nan(value):
        return "—"
    if isinstance(value, numbers.Integral) or digits == 0:
        return f"{int(round(float(value))):,}"
    return f"{float(value):.{digits}f}"


def fmt_p(p) -> str:
    if _nan(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _iso(dt) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "—"


def _not_enough(counts: dict, need: int, what: str = "per arm") -> str:
    shown = ", ".join(f"{arm}: {n}" for arm, n in counts.items()) or "0"
    return f"not enough data (n = {shown}; at least {need} {what} in at least two arms needed)"


# --- data -------------------------------------------------------------------------------------


@dataclass
class Frames:
    participants: object
    responses: object
    turns: object
    llm_calls: object
    learner_models: object
    predictions: object


def load_frames(scope: frames.Scope) -> Frames:
    """Read every per-participant table of the scope into DataFrames (predictions as `predicted_correct`)."""
    kinds = frames.item_kinds(scope.versions)
    rows = {name: [] for name in ("participants", "responses", "turns", "llm_calls", "learner_models", "predictions")}
    for chunk in frames.participant_chunks(scope):
        _, totals = frames.event_rows(chunk)
        rows["participants"] += frames.participant_rows(chunk, totals)
        rows["responses"] += frames.response_rows(chunk, kinds)
        rows["turns"] += frames.turn_rows(chunk)
        # the request/response JSON and the learner-model state are not needed here: dropped as they come
        rows["llm_calls"] += (row[:-2] + (None, None) for row in frames.llm_call_rows(chunk))
        rows["learner_models"] += (row[:-2] + (None, row[-1]) for row in frames.learner_model_rows(chunk))
        rows["predictions"] += frames.prediction_rows(chunk)
    built = {name: frames.frame(name, table) for name, table in rows.items()}
    built["predictions"] = built["predictions"].rename(columns={"p_correct": "predicted_correct"})
    return Frames(**built)


def _arm_order(scope, participants) -> list[str]:
    """Arms in the order of the study file (latest version first), then any other arm seen."""
    order: list[str] = []
    for version in reversed(scope.versions):
        for arm in version.spec.get("arms") or []:
            if arm["id"] not in order:
                order.append(arm["id"])
    seen = [a for a in participants["arm"].dropna().astype(str).unique() if a]
    used = [a for a in order if a in seen] + sorted(a for a in seen if a not in order)
    return used


def _arm_kinds(scope) -> dict[str, str]:
    return {a["id"]: a.get("kind", "") for v in scope.versions for a in v.spec.get("arms") or []}


# --- section 2: flow ---------------------------------------------------------------------------

FLOW_ROWS = [
    ("allocated", "Allocated"),
    ("pre_test", "Completed pre-test"),
    ("explanation", "Completed explanation"),
    ("post_test", "Completed post-test"),
    ("completed", "Completed the study"),
    ("withdrawn", "Withdrawn"),
    ("active", "Still active / left"),
]


def flow_counts(participants, arms: list[str]) -> dict:
    """CONSORT-style counts: entered → consented (declined) → allocated per arm → each phase → completed."""
    p = participants
    status = p["status"].astype(str)
    step_index = p["step"].astype(str).map({s: i for i, s in enumerate(STEP_ORDER)}).fillna(0)
    done = status == "completed"

    def past(step: str):
        return (step_index > STEP_ORDER.index(step)) | done

    arm = p["arm"].fillna("").astype(str)
    per_arm = {}
    for a in arms:
        mine = arm == a
        per_arm[a] = {
            "allocated": int(mine.sum()),
            "pre_test": int((mine & past("pre_test")).sum()),
            "explanation": int((mine & past("explanation")).sum()),
            "post_test": int((mine & past("post_test")).sum()),
            "completed": int((mine & done).sum()),
            "withdrawn": int((mine & (status == "withdrawn")).sum()),
            "active": int((mine & (status == "active")).sum()),
        }
    consented = p["consented_at"].notna()
    return {
        "entered": int(len(p)),
        "consented": int(consented.sum()),
        "declined": int((status == "declined").sum()),
        "no_decision": int((~consented & (status != "declined")).sum()),
        "not_allocated": int((consented & (arm == "")).sum()),
        "allocated": int((arm != "").sum()),
        "arms": per_arm,
    }


# --- SVG plots ---------------------------------------------------------------------------------


def _e(text) -> str:
    return html.escape(str(text), quote=True)


class _Svg:
    """A tiny SVG canvas: a plot box, linear y (and optionally x) scales, axes, and the data marks.

    Two layers: `axes` (axis lines, grid, ticks, tick labels, titles) lie around the plot box, inside the
    canvas; `marks` (points, intervals, boxes, value labels) lie inside the plot box, by construction:
    the scales map the axis range onto the box inset by `inset` px (room for a point's radius), and an
    interval is clipped to the axis range, a clipped end drawn as an arrowhead at the box's edge (it goes
    on beyond the axis). The marks' group carries the box as `data-box="x0 y0 x1 y1"` for tests.
    """

    def __init__(self, width, height, title, left=56, right=16, top=30, bottom=46, inset=8):
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom, self.inset = left, right, top, bottom, inset
        self.axes = [f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="13" font-weight="bold">'
                     f'{_e(title)}</text>']
        self.marks: list[str] = []
        self.title = title
        self.clipped = 0  # interval ends drawn as arrows
        self.desc = ""  # a text alternative, said after the title

    @property
    def x0(self):
        return self.left

    @property
    def x1(self):
        return self.w - self.right

    @property
    def y0(self):
        return self.h - self.bottom

    @property
    def y1(self):
        return self.top

    def set_y(self, lo, hi):
        self.ylo, self.yhi = lo, hi

    def set_x(self, lo, hi):
        self.xlo, self.xhi = lo, hi

    def y(self, v):
        bottom, top = self.y0 - self.inset, self.y1 + self.inset
        return bottom - (v - self.ylo) / (self.yhi - self.ylo) * (bottom - top)

    def x(self, v):
        left, right = self.x0 + self.inset, self.x1 - self.inset
        return left + (v - self.xlo) / (self.xhi - self.xlo) * (right - left)

    def add(self, part: str):
        """Add a data mark (inside the plot box)."""
        self.marks.append(part)

    @staticmethod
    def _line(x1, y1, x2, y2, color, width, dash) -> str:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
                f'stroke-width="{width}"{d}/>')

    @staticmethod
    def _text(x, y, s, anchor, size, color, rotate) -> str:
        r = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate else ""
        return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{color}"{r}>'
                f'{_e(s)}</text>')

    def line(self, x1, y1, x2, y2, color="#333", width=1, dash=None):
        self.marks.append(self._line(x1, y1, x2, y2, color, width, dash))

    def axis_line(self, x1, y1, x2, y2, color="#333", width=1, dash=None):
        self.axes.append(self._line(x1, y1, x2, y2, color, width, dash))

    def text(self, x, y, s, anchor="middle", size=11, color="#222", rotate=None):
        self.marks.append(self._text(x, y, s, anchor, size, color, rotate))

    def axis_text(self, x, y, s, anchor="middle", size=11, color="#222", rotate=None):
        self.axes.append(self._text(x, y, s, anchor, size, color, rotate))

    def circle(self, cx, cy, r, color, opacity=None, title=None):
        o = f' fill-opacity="{opacity}"' if opacity is not None else ""
        t = f"><title>{_e(title)}</title></circle>" if title else "/>"
        self.marks.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="{color}"{o}{t}')

    def v_interval(self, cx, lo, hi, color, width=2, cap=8):
        """A vertical interval [lo, hi] at cx, clipped to the y range.

        An end inside the range gets a cap; an end cut off gets an arrowhead at the box's edge (it goes on)."""
        top, bottom = min(max(hi, self.ylo), self.yhi), min(max(lo, self.ylo), self.yhi)
        self.line(cx, self.y(top), cx, self.y(bottom), color=color, width=width)
        for value, shown, edge, sign in ((hi, top, self.y1, -1), (lo, bottom, self.y0, 1)):
            y = self.y(shown)
            if value == shown:
                if cap:
                    self.line(cx - cap, y, cx + cap, y, color=color, width=width)
                continue
            self.clipped += 1  # an arrowhead from the end of the axis range to the box's edge: it goes on
            tip = edge - sign * 1
            self.line(cx, y, cx, tip, color=color, width=width)
            base = tip - sign * 7
            side = "high" if sign < 0 else "low"
            self.marks.append(f'<polygon data-clipped="{side}" points="{cx - 4:.1f},{base:.1f} '
                              f'{cx + 4:.1f},{base:.1f} {cx:.1f},{tip:.1f}" fill="{color}"/>')

    def slot_label(self, cx, y, label, slot):
        """An arm's label under its slot, cut to the slot's width (the whole label in its tooltip)."""
        fits = max(4, int(slot / 6.2))
        shown = label if len(label) <= fits else label[:fits - 1] + "…"
        self.axes.append(f'<text x="{cx:.1f}" y="{y:.1f}" text-anchor="middle" font-size="11" fill="#222">'
                         f'<title>{_e(label)}</title>{_e(shown)}</text>')

    def y_axis(self, ticks, label, digits=1):
        self.axis_line(self.x0, self.y0, self.x0, self.y1)
        for t in ticks:
            y = self.y(t)
            self.axis_line(self.x0 - 4, y, self.x0, y)
            self.axis_line(self.x0, y, self.x1, y, color="#e3e3e3")
            self.axis_text(self.x0 - 6, y + 4, f"{t:.{digits}f}", anchor="end", size=10)
        self.axis_text(14, (self.y0 + self.y1) / 2, label, rotate=-90)

    def x_axis(self, ticks, label, digits=1):
        self.axis_line(self.x0, self.y0, self.x1, self.y0)
        for t in ticks:
            x = self.x(t)
            self.axis_line(x, self.y0, x, self.y0 + 4)
            self.axis_text(x, self.y0 + 16, f"{t:.{digits}f}", size=10)
        self.axis_text((self.x0 + self.x1) / 2, self.h - 8, label)

    def render(self) -> str:
        box = f"{self.x0:.1f} {self.y1:.1f} {self.x1:.1f} {self.y0:.1f}"
        return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" font-family="sans-serif"><title>{_e(self.title)}</title>'
                f'{f"<desc>{_e(self.desc)}</desc>" if self.desc else ""}'
                f'<g data-role="axes">{"".join(self.axes)}</g>'
                f'<g data-role="marks" data-box="{box}" data-clipped="{self.clipped}">{"".join(self.marks)}</g></svg>')


def _ticks(lo, hi, n=5):
    step = (hi - lo) / (n - 1)
    return [lo + i * step for i in range(n)]


def _nice(lo, hi, n=5):
    """Round (lo, hi) outwards to a "nice" step (1, 2, 2.5 or 5 × 10^k); return lo, hi, ticks, digits."""
    raw = (hi - lo) / max(1, n - 1)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    count = int(round((hi - lo) / step))
    digits = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if step / power == 2.5 else 0)
    return lo, hi, [lo + i * step for i in range(count + 1)], digits


def _range(values, pad=0.1, floor=None, ceil=None):
    import numpy as np

    v = np.asarray([x for x in values if not _nan(x)], dtype=float)
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    span = hi - lo
    lo, hi = lo - pad * span, hi + pad * span
    if floor is not None:
        lo = max(lo, floor)
    if ceil is not None:
        hi = min(hi, ceil)
    return lo, hi


def gain_strip_svg(measures, arms: list[str]) -> str:
    """Gain per arm: a box (quartiles, whiskers at 1.5 IQR) with every participant as a jittered dot."""
    import numpy as np

    svg = _Svg(max(320, 130 * len(arms) + 80), 300, "Gain (post − pre) per participant")
    svg.set_y(-1.0, 1.0)  # a gain is a difference of two scores in [0, 1]: every one lies in [−1, 1]
    svg.y_axis(_ticks(-1.0, 1.0, 5), "gain")
    svg.line(svg.x0, svg.y(0), svg.x1, svg.y(0), color="#999", dash="4 3")
    slot = (svg.x1 - svg.x0) / max(1, len(arms))
    rng = np.random.default_rng(SEED)
    for i, arm in enumerate(arms):
        color = PALETTE[i % len(PALETTE)]
        cx = svg.x0 + slot * (i + 0.5)
        v = measures.loc[measures["arm"] == arm, "gain"].dropna().to_numpy(dtype=float)
        v = np.clip(v, -1.0, 1.0)
        svg.slot_label(cx, svg.y0 + 16, f"{arm} (n = {len(v)})" if len(v) else f"{arm}: no data", slot)
        if len(v) == 0:
            continue
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        iqr = q3 - q1
        lo_w = v[v >= q1 - 1.5 * iqr].min()
        hi_w = v[v <= q3 + 1.5 * iqr].max()
        half = min(34, slot / 4)
        svg.line(cx, svg.y(lo_w), cx, svg.y(q1), color=color)
        svg.line(cx, svg.y(q3), cx, svg.y(hi_w), color=color)
        svg.line(cx - half / 2, svg.y(lo_w), cx + half / 2, svg.y(lo_w), color=color)
        svg.line(cx - half / 2, svg.y(hi_w), cx + half / 2, svg.y(hi_w), color=color)
        top = svg.y(q3)
        svg.add(f'<rect x="{cx - half:.1f}" y="{top:.1f}" width="{2 * half:.1f}" '
                f'height="{max(svg.y(q1) - top, 0.5):.1f}" fill="{color}" fill-opacity="0.12" stroke="{color}"/>')
        svg.line(cx - half, svg.y(med), cx + half, svg.y(med), color=color, width=2)
        jitter = rng.uniform(-half * 0.9, half * 0.9, size=len(v))
        for value, dx in zip(v, jitter):
            svg.circle(cx + dx, svg.y(value), 3, color, opacity=0.65)
    return svg.render()


def mean_ci(values, alpha=0.05) -> tuple[int, float, float, float]:
    """n, mean and the t-interval of the mean (NaN bounds for n < 2)."""
    import numpy as np
    from scipy import stats as sps

    v = np.asarray([x for x in values if not _nan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return 0, float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if n < 2:
        return n, m, float("nan"), float("nan")
    half = float(sps.t.ppf(1 - alpha / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return n, m, m - half, m + half


def mean_gain_svg(measures, arms: list[str]) -> str:
    """Mean gain per arm with its 95 % t-interval.

    The axis spans 0, every mean and every interval end, padded and rounded to nice ticks, but never more
    than [−1, 1], the range a mean gain can take: an interval reaching past it (a t-interval of few
    participants often does) is cut at the axis and ends in an arrowhead.
    """
    stats = {arm: mean_ci(measures.loc[measures["arm"] == arm, "gain"]) for arm in arms}
    ends = [x for s in stats.values() for x in s[1:]]
    lo, hi = _range([0.0] + ends, pad=0.1, floor=-1.0, ceil=1.0)
    lo, hi, ticks, digits = _nice(lo, hi)
    lo, hi = max(lo, -1.0), min(hi, 1.0)
    ticks = [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]
    svg = _Svg(max(320, 130 * len(arms) + 80), 300, "Mean gain with 95 % interval", inset=10)
    svg.set_y(lo, hi)
    svg.y_axis(ticks, "mean gain", digits=digits)
    svg.line(svg.x0, svg.y(0), svg.x1, svg.y(0), color="#999", dash="4 3")
    slot = (svg.x1 - svg.x0) / max(1, len(arms))
    for i, arm in enumerate(arms):
        color = PALETTE[i % len(PALETTE)]
        cx = svg.x0 + slot * (i + 0.5)
        n, m, cl, ch = stats[arm]
        svg.slot_label(cx, svg.y0 + 16, f"{arm} (n = {n})" if n else f"{arm}: no data", slot)
        if n == 0:
            continue
        if not _nan(cl):
            svg.v_interval(cx, cl, ch, color)
        svg.circle(cx, svg.y(m), 5, color)
        svg.text(cx + 12, svg.y(m) + 4, f"{m:.3f}", anchor="start", size=10)
    return svg.render()


def calibration_table(responses, measures, arms: list[str], bins: int = 10):
    """Post-test predict items with a confidence, pooled per arm and confidence bin.

    Each row: arm, bin, n answers, mean confidence (0–1), accuracy (the share right) and its Wilson 95 %
    score interval (`stats.wilson_interval`, answers counted as independent).
    """
    import numpy as np

    from .stats import wilson_interval

    resp = responses[responses["pseudonym"].isin(measures["pseudonym"])]
    resp = resp[(resp["phase"] == "post_test") & (resp["item_kind"].astype(str) == "predict")]
    conf = resp["confidence"].astype(float)
    y = resp["correct"].astype("boolean").astype(float).fillna(resp["score"].astype(float))
    arm = resp["pseudonym"].map(measures.set_index("pseudonym")["arm"])
    ok = conf.notna() & y.notna()
    rows = []
    for a in arms:
        keep = ok & (arm == a)
        c, yy = conf[keep].to_numpy(), y[keep].to_numpy()
        b = np.clip(np.floor(c * bins / 100.0), 0, bins - 1).astype(int)
        for k in sorted(set(b.tolist())):
            m = b == k
            low, high = wilson_interval(float(yy[m].sum()), int(m.sum()))
            rows.append({"arm": a, "bin": k, "n": int(m.sum()), "confidence": float(c[m].mean() / 100.0),
                         "accuracy": float(yy[m].mean()), "ci_low": low, "ci_high": high})
    return rows


def calibration_svg(rows, arms: list[str]) -> str:
    """Accuracy against mean confidence per bin, with the Wilson interval of each bin's accuracy."""
    width = 380
    # the legend sits above the plot box (inside it, it would hide the points of a corner), wrapped in rows
    legend, x, line = [], 16.0, 0
    for i, arm in enumerate(arms):
        name = arm if len(arm) <= 28 else arm[:27] + "…"
        step = 22 + len(name) * 6.2
        if x + step > width - 8 and x > 16:
            x, line = 16.0, line + 1
        legend.append((x, line, name, PALETTE[i % len(PALETTE)]))
        x += step
    top = 30 + 14 * (line + 1) + 4 if arms else 30
    svg = _Svg(width, 310 + top, "Calibration (post-test predict items)", top=top, bottom=50, inset=10)
    svg.set_x(0, 1)
    svg.set_y(0, 1)
    svg.y_axis(_ticks(0, 1, 6), "accuracy")
    svg.x_axis(_ticks(0, 1, 6), "mean confidence in bin")
    for x, line, name, color in legend:
        y = 34 + 14 * line
        svg.axes.append(f'<circle cx="{x + 4:.1f}" cy="{y - 4:.1f}" r="4" fill="{color}"/>')
        svg.axis_text(x + 12, y, name, anchor="start", size=10)
    svg.line(svg.x(0), svg.y(0), svg.x(1), svg.y(1), color="#999", dash="4 3")
    if not rows:
        svg.text((svg.x0 + svg.x1) / 2, (svg.y0 + svg.y1) / 2, "no rated predict items")
    for i, arm in enumerate(arms):
        color = PALETTE[i % len(PALETTE)]
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        points = " ".join(f"{svg.x(r['confidence']):.1f},{svg.y(r['accuracy']):.1f}" for r in mine)
        svg.add(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for r in mine:
            if not _nan(r.get("ci_low")):
                svg.v_interval(svg.x(r["confidence"]), r["ci_low"], r["ci_high"], color, width=1, cap=3)
            radius = 2.5 + min(6.0, math.sqrt(r["n"]))
            svg.circle(svg.x(r["confidence"]), svg.y(r["accuracy"]), radius, color, opacity=0.6,
                       title=f"{arm}: {r['n']} answer{'s' if r['n'] != 1 else ''}")
    return svg.render()


def _not_consented(flow: dict) -> str:
    declined, left = flow["declined"], flow["no_decision"]
    if not declined and not left:
        return "nobody"
    return ", ".join(part for part in (f"{declined} declined" if declined else "",
                                       f"{left} left undecided" if left else "") if part)


def flow_svg(flow: dict, arms: list[str]) -> str:
    """A simple CONSORT diagram: enrolment boxes on top, one column of boxes per arm."""
    col_w, box_w, box_h, gap = 180, 160, 40, 18
    width = max(560, col_w * len(arms) + 40)
    rows = [r for r in FLOW_ROWS if r[0] not in ("withdrawn", "active")]
    height = 10 + 3 * (box_h + gap) + 12 + len(rows) * (box_h + gap)
    parts = []

    def box(x, y, lines, fill="#f5f7fa"):
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{box_w}" height="{box_h}" rx="4" fill="{fill}" '
                     f'stroke="#556"/>')
        for k, line in enumerate(lines):
            shown = line if len(line) <= 25 else line[:24] + "…"  # 25 characters fill a box at 11 px
            parts.append(f'<text x="{x + box_w / 2:.1f}" y="{y + 16 + 14 * k:.1f}" text-anchor="middle" '
                         f'font-size="11">{_e(shown)}</text>')

    def arrow(x1, y1, x2, y2):
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#556" '
                     f'stroke-width="1.2"/>')
        parts.append(f'<polygon points="{x2 - 4:.1f},{y2 - 6:.1f} {x2 + 4:.1f},{y2 - 6:.1f} {x2:.1f},{y2:.1f}" '
                     f'fill="#556"/>')

    cx = width / 2 - box_w / 2
    y = 10
    box(cx, y, ["Entered", f"n = {flow['entered']}"])
    side = cx + box_w + 30
    if side + box_w < width:
        mid = y + box_h + gap / 2
        parts.append(f'<line x1="{cx + box_w / 2:.1f}" y1="{mid:.1f}" x2="{side:.1f}" y2="{mid:.1f}" '
                     f'stroke="#556" stroke-width="1.2"/>')
        box(side, mid - box_h / 2, ["Did not consent", _not_consented(flow)], fill="#fff")
    arrow(cx + box_w / 2, y + box_h, cx + box_w / 2, y + box_h + gap)
    y += box_h + gap
    box(cx, y, ["Consented", f"n = {flow['consented']}"])
    arrow(cx + box_w / 2, y + box_h, cx + box_w / 2, y + box_h + gap)
    y += box_h + gap
    box(cx, y, ["Allocated", f"n = {flow['allocated']}"])
    top = y + box_h
    y += box_h + gap + 12
    left = (width - col_w * len(arms)) / 2
    for i, arm in enumerate(arms):
        x = left + col_w * i + (col_w - box_w) / 2
        arrow(cx + box_w / 2, top, x + box_w / 2, y)
        yy = y
        counts = flow["arms"][arm]
        for j, (key, label) in enumerate(rows):
            text = [f"{arm}: allocated" if key == "allocated" else label, f"n = {counts[key]}"]
            if key == "completed" and counts["withdrawn"]:
                text[1] += f" (withdrawn {counts['withdrawn']})"
            box(x, yy, text, fill="#eef4fb" if key == "allocated" else "#f5f7fa")
            if j < len(rows) - 1:
                arrow(x + box_w / 2, yy + box_h, x + box_w / 2, yy + box_h + gap)
            yy += box_h + gap
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif"><title>Participant flow</title>'
            + "".join(parts) + "</svg>")


# --- statistics (every one guarded) ---------------------------------------------------------------


def _guard(fn):
    """Run fn() and return ("ok", value) or ("error", message) — a failing test never breaks the report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", fn()
        except (ValueError, ZeroDivisionError, ArithmeticError, KeyError, IndexError, TypeError) as error:
            return "error", f"could not be computed: {error}"
        except Exception as error:  # numpy.linalg.LinAlgError, statsmodels convergence and the like
            return "error", f"could not be computed: {type(error).__name__}: {error}"


def _complete_counts(measures, arms, cols=("pre", "post")) -> dict[str, int]:
    ok = measures[list(cols)].notna().all(axis=1)
    return {arm: int((ok & (measures["arm"] == arm)).sum()) for arm in arms}


def statistics(measures, responses, participants, arms: list[str]) -> dict:
    """The inferential section: ANCOVA, pairwise Welch + Holm + Hedges' g, Kruskal–Wallis, GEE, power."""
    import pandas as pd

    from . import measures as M
    from . import stats as S

    counts = _complete_counts(measures, arms)
    usable = [a for a in arms if counts[a] >= MIN_PER_ARM]
    out: dict = {"counts": counts, "usable": usable, "left_out": [a for a in arms if a not in usable],
                 "min_per_arm": MIN_PER_ARM, "item_min_per_arm": ITEM_MODEL_MIN_PER_ARM}
    if len(usable) < 2:
        out["message"] = _not_enough(counts, MIN_PER_ARM)
        return out
    data = measures[measures["arm"].isin(usable)].copy()
    data["arm"] = pd.Categorical(data["arm"], categories=usable)

    # ANCOVA: post ~ arm + pre
    state, res = _guard(lambda: S.ancova(data, outcome="post", covariate="pre", group="arm"))
    if state == "ok":
        out["ancova"] = {
            "n": res["n"], "reference": res["reference"],
            "F": fmt(res["arm_F"]), "df": f"{res['arm_df'][0]}, {fmt(res['arm_df'][1], 0)}", "p": fmt_p(res["arm_p"]),
            "partial_eta2": fmt(res["partial_eta2"]), "r_squared": fmt(res["r_squared"]),
            "slope": fmt(res["slope"]["estimate"]), "slope_ci": _ci(res["slope"]["ci_low"], res["slope"]["ci_high"]),
            "slopes_p": fmt_p(res["slopes_p"]),
            "adjusted": [
                {"arm": r["arm"], "n": r["n"], "mean": fmt(r["mean"]), "adjusted_mean": fmt(r["adjusted_mean"]),
                 "ci": _ci(r["ci_low"], r["ci_high"])}
                for r in res["adjusted_means"].to_dict("records")
            ],
            "contrasts": [
                {"contrast": r["contrast"], "estimate": fmt(r["estimate"]), "ci": _ci(r["ci_low"], r["ci_high"]),
                 "t": fmt(r["t"], 2), "p": fmt_p(r["p"]), "p_holm": fmt_p(r["p_holm"])}
                for r in res["contrasts"].to_dict("records")
            ],
            "raw": res,
        }
    else:
        out["ancova_error"] = res

    # pairwise Welch t on gain, Holm, Hedges' g with bootstrap interval
    state, res = _guard(lambda: S.pairwise(data, outcome="gain",
                                           n_boot=N_BOOT, seed=SEED))
    if state == "ok":
        out["pairwise"] = [
            {"pair": f"{r['a']} − {r['b']}", "n": f"{r['n_a']} / {r['n_b']}", "diff": fmt(r["mean_diff"]),
             "ci": _ci(r["ci_low"], r["ci_high"]), "t": fmt(r["t"], 2), "df": fmt(r["df"], 1), "p": fmt_p(r["p"]),
             "p_adj": fmt_p(r["p_adj"]), "g": fmt(r["g"], 2), "g_ci": _ci(r["g_ci_low"], r["g_ci_high"], 2)}
            for r in res.to_dict("records")
        ]
    else:
        out["pairwise_error"] = res

    # Kruskal–Wallis on gain with Mann–Whitney follow-ups
    state, res = _guard(lambda: S.kruskal(data, outcome="gain"))
    if state == "ok":
        out["kruskal"] = {
            "H": fmt(res["H"], 2), "df": res["df"], "p": fmt_p(res["p"]), "n": res["n"],
            "epsilon_squared": fmt(res["epsilon_squared"]),
            "pairs": [
                {"pair": f"{r['a']} − {r['b']}", "U": fmt(r["U"], 1), "p": fmt_p(r["p"]), "p_adj": fmt_p(r["p_adj"]),
                 "r": fmt(r["rank_biserial"], 2)}
                for r in res["pairs"].to_dict("records")
            ],
        }
    else:
        out["kruskal_error"] = res

    # item-level model (GEE) when there is enough data
    item_usable = [a for a in usable if counts[a] >= ITEM_MODEL_MIN_PER_ARM]
    if len(item_usable) >= 2:
        long = M.item_responses(participants, responses, include_simulated=True)
        long = long[long["pseudonym"].isin(data["pseudonym"]) & long["arm"].isin(item_usable)]
        long = long.assign(arm=pd.Categorical(long["arm"], categories=item_usable))
        n_people = long["pseudonym"].nunique()
        cov_type = "bias_reduced" if n_people < 40 else "robust"

        def fit():
            try:
                return S.item_level_model(long, cov_type=cov_type)
            except ValueError as error:
                if "not identifiable" not in str(error):
                    raise
                return S.item_level_model(long, cov_type=cov_type, item_effects=False)

        state, res = _guard(fit)
        if state == "ok":
            terms = res["coefficients"]
            terms = terms[~terms["term"].str.startswith("item[")]
            out["item_model"] = {
                "n_obs": res["n_obs"], "n_participants": res["n_participants"], "n_items": res["n_items"],
                "cov_type": cov_type, "correlation": fmt(res.get("correlation")),
                "dropped": ", ".join(res["dropped_items"]) or "none",
                "rows": [
                    {"term": r["term"], "estimate": fmt(r["estimate"]), "se": fmt(r["se"]),
                     "ci": _ci(r["ci_low"], r["ci_high"]), "p": fmt_p(r["p"]), "odds_ratio": fmt(r["odds_ratio"], 2),
                     "interaction": r["term"].endswith(":post")}
                    for r in terms.to_dict("records")
                ],
            }
        else:
            out["item_model_error"] = res
    else:
        out["item_model_error"] = _not_enough({a: counts[a] for a in arms}, ITEM_MODEL_MIN_PER_ARM)

    # power for the next study: observed adjusted difference / pooled SD of post, pooled pre–post r
    out["power"] = _power(data, usable, out.get("ancova", {}).get("raw"))
    if "ancova" in out:
        out["ancova"].pop("raw", None)
    return out


def _ci(lo, hi, digits=3) -> str:
    if _nan(lo) or _nan(hi):
        return "—"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _power(data, usable, ancova_result) -> dict:
    import numpy as np

    from . import stats as S

    if ancova_result is None:
        return {"message": "no ANCOVA result to base it on"}
    # pooled within-arm SD of post and within-arm pre–post correlation
    ss, df, rs, ws = 0.0, 0, [], []
    for arm in usable:
        g = data[data["arm"] == arm][["pre", "post"]].dropna()
        if len(g) >= 2:
            ss += float(((g["post"] - g["post"].mean()) ** 2).sum())
            df += len(g) - 1
            if g["pre"].std() > 0 and g["post"].std() > 0:
                rs.append(float(np.corrcoef(g["pre"], g["post"])[0, 1]))
                ws.append(len(g))
    sd = math.sqrt(ss / df) if df > 0 else float("nan")
    r = float(np.average(rs, weights=ws)) if rs else 0.0
    r = max(min(r, 0.95), -0.95)
    k = len(usable)
    comparisons = 1 if k == 2 else k * (k - 1) // 2
    rows = []
    for c in ancova_result["contrasts"].to_dict("records"):
        d = abs(c["estimate"]) / sd if sd and not _nan(sd) and sd > 0 else float("nan")
        row = {"contrast": c["contrast"], "d": fmt(d, 2)}
        if _nan(d) or d < 0.05:
            row["message"] = "observed effect too small (or no spread) to plan on"
        else:
            state, res = _guard(lambda: S.power_next_study(d, r, k_arms=k, comparisons=comparisons))
            if state == "ok":
                row.update(n_per_arm=res["n_per_arm"], n_total=res["n_total"], n_ttest=res["n_ttest_per_arm"],
                           alpha=fmt(res["alpha_per_comparison"], 4))
            else:
                row["message"] = res
        rows.append(row)
    conventional = _guard(lambda: S.power_next_study(0.5, r, k_arms=k, comparisons=comparisons))
    return {"sd_post": fmt(sd), "r": fmt(r, 2), "rows": rows, "k": k, "comparisons": comparisons,
            "d05": conventional[1]["n_per_arm"] if conventional[0] == "ok" else "—"}


# --- learner-model fidelity ------------------------------------------------------------------------


def fidelity(measures, responses, predictions, learner_models, participants, arms) -> dict:
    """Predicted p_correct vs the real post-test outcome, pooled per arm; and the snapshot counts."""
    from . import measures as M

    arm_of = measures.set_index("pseudonym")["arm"]
    rows = []
    if len(predictions):
        resp = M._with_outcome(responses[responses["pseudonym"].isin(measures["pseudonym"])])
        post = resp.loc[(resp["phase"] == M.POST) & resp["y"].notna(), ["pseudonym", "item_id", "y"]]
        pred = predictions[["pseudonym", "item_id"]].assign(p=M._as_float(predictions["predicted_correct"]))
        both = pred[pred["p"].notna()].merge(post, on=["pseudonym", "item_id"], how="inner")
        both["arm"] = both["pseudonym"].map(arm_of)
        for arm in arms:
            mine = both[both["arm"] == arm]
            if mine.empty:
                continue
            hit = ((mine["p"] >= 0.5).astype(float) == mine["y"]).mean()
            brier = ((mine["p"] - mine["y"]) ** 2).mean()
            base = mine["y"].mean()
            rows.append({
                "arm": arm, "participants": int(mine["pseudonym"].nunique()), "items": int(len(mine)),
                "accuracy": fmt(hit), "brier": fmt(brier), "base_rate": fmt(base),
                "majority": fmt(max(base, 1 - base)), "base_brier": fmt(base * (1 - base)),
                "mean_p": fmt(mine["p"].mean()),
            })
    lm = learner_models.copy()
    all_arms = participants.set_index("pseudonym")["arm"]
    lm["arm"] = lm["pseudonym"].map(all_arms)
    snapshots = []
    for arm in sorted(set(lm["arm"].dropna().astype(str))):
        mine = lm[lm["arm"] == arm]
        sources = mine["source"].astype(str).value_counts().to_dict()
        snapshots.append({"arm": arm, "snapshots": int(len(mine)), "participants": int(mine["pseudonym"].nunique()),
                          "sources": ", ".join(f"{k}: {v}" for k, v in sorted(sources.items()))})
    return {"rows": rows, "snapshots": snapshots, "snapshot_total": int(len(lm)),
            "predictions_total": int(len(predictions)), "any": bool(len(predictions)) or bool(len(lm))}


# --- measures table ----------------------------------------------------------------------------


#: Measures whose every value lies in [0, 1]: their interval is Wilson's (`stats.wilson_mean_interval`), not t.
BOUNDED_MEASURES = ("pre", "post", "forward_sim_accuracy", "brier", "ece")


def answer_counts(responses, measures) -> dict[tuple[str, str], int]:
    """Per (arm, measure): the answers behind the mean of pre, post, forward_sim_accuracy and brier.

    The cap of the effective sample size in `stats.wilson_mean_interval`: an arm's mean score cannot hold
    more information than its answers counted as independent.
    """
    from . import measures as M

    arm_of = measures.set_index("pseudonym")["arm"]
    resp = M._with_outcome(responses[responses["pseudonym"].isin(measures["pseudonym"])])
    resp = resp.assign(arm=resp["pseudonym"].map(arm_of))
    predict = resp[(resp["phase"] == M.POST) & (resp["item_kind"].astype(str) == M.PREDICT) & resp["y"].notna()]
    parts = {
        "pre": resp[(resp["phase"] == M.PRE) & resp["score"].notna()],
        "post": resp[(resp["phase"] == M.POST) & resp["score"].notna()],
        "forward_sim_accuracy": predict,
        "brier": predict[predict["confidence"].notna()],
    }
    return {(arm, measure): int(n) for measure, part in parts.items() for arm, n in part.groupby("arm").size().items()}


def measure_rows(measures, arms, answers: dict | None = None) -> list[dict]:
    """Per measure and arm: n, mean, 95 % interval, SD, median.

    The interval of a measure in [0, 1] (`BOUNDED_MEASURES`) is Wilson's score interval of the mean with its
    effective sample size, capped by `answers` (see `answer_counts`); the others get the t-interval.
    """
    from .measures import MEASURES, arm_summary
    from .stats import wilson_mean_interval

    summary = arm_summary(measures) if len(measures) else None
    rows = []
    for measure in MEASURES:
        if measure.startswith("lm_"):
            continue  # in the learner-model section
        label, unit = MEASURE_LABELS.get(measure, (measure, ""))
        digits = {"time_on_task_s": 1, "tokens": 0, "turns": 2, "cost_usd": 4}.get(measure, 3)
        wilson = measure in BOUNDED_MEASURES
        cells = []
        for arm in arms:
            values = measures.loc[measures["arm"] == arm, measure]
            if wilson:
                n, m, lo, hi = wilson_mean_interval(values.clip(0.0, 1.0), max_n=(answers or {}).get((arm, measure)))
            else:
                n, m, lo, hi = mean_ci(values)
            s = None
            if summary is not None:
                hit = summary[(summary["arm"] == arm) & (summary["measure"] == measure)]
                s = hit.iloc[0] if len(hit) else None
            cells.append({
                "arm": arm, "n": n, "mean": fmt(m, digits) if n else "—",
                "sd": fmt(s["sd"], digits) if s is not None else "—",
                "median": fmt(s["median"], digits) if s is not None else "—",
                "ci": _ci(lo, hi, max(digits, 1)), "ci_low": lo, "ci_high": hi,
            })
        rows.append({"measure": measure, "label": label, "unit": unit, "cells": cells,
                     "interval": "Wilson" if wilson else "t"})
    return rows


# --- completion (attrition) per arm --------------------------------------------------------------


def completion(flow: dict, arms: list[str]) -> dict:
    """Completion rate per arm (completed / allocated) with Wilson's interval, and each pair's difference
    with Newcombe's hybrid score interval (differential attrition)."""
    from .stats import newcombe_interval, wilson_interval

    rows = []
    for arm in arms:
        done, allocated = flow["arms"][arm]["completed"], flow["arms"][arm]["allocated"]
        low, high = wilson_interval(done, allocated)
        rows.append({"arm": arm, "completed": done, "allocated": allocated,
                     "rate": fmt(done / allocated) if allocated else "—", "ci": _ci(low, high),
                     "ci_low": low, "ci_high": high, "sentence": _completed_sentence(done, allocated)})
    pairs = []
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            ra, rb = flow["arms"][a], flow["arms"][b]
            if not ra["allocated"] or not rb["allocated"]:
                continue
            low, high = newcombe_interval(ra["completed"], ra["allocated"], rb["completed"], rb["allocated"])
            diff = ra["completed"] / ra["allocated"] - rb["completed"] / rb["allocated"]
            pairs.append({"pair": f"{a} − {b}", "diff": fmt(diff), "ci": _ci(low, high),
                          "ci_low": low, "ci_high": high})
    return {"rows": rows, "pairs": pairs}


def _completed_sentence(done: int, allocated: int) -> str:
    """"3 of 4 completed", with its own words for the empty and the whole count (never "0 of 0")."""
    if not allocated:
        return "nobody allocated yet"
    if done == allocated:
        return f"all {allocated} completed" if allocated > 1 else "the one participant completed"
    if not done:
        return f"none of the {allocated} completed" if allocated > 1 else "the one participant has not completed"
    return f"{done} of {allocated} completed"


# --- the report --------------------------------------------------------------------------------


def report_context(*, slug: str, include_simulated: bool = False, include_pilot: bool = False) -> dict:
    """Everything the template shows, computed in one read-only snapshot of the database."""
    from . import measures as M

    with frames.read_only_snapshot():
        made_at = timezone.now()
        scope = frames.export_scope(slug=slug, include_simulated=include_simulated, include_pilot=include_pilot)
        data = load_frames(scope)
        everyone = Participant.objects.filter(study=scope.study)
        left_out = {
            "simulated": 0 if include_simulated else everyone.filter(is_simulated=True).count(),
            "pilot": 0 if include_pilot else everyone.filter(is_pilot=True).count(),
            "simulated_completed": 0 if include_simulated else everyone.filter(is_simulated=True, status="completed").count(),
        }
        in_scope = scope.participants()
        left_out["deleted_withdrawn"] = everyone.filter(
            status=Participant.Status.WITHDRAWN, version_id__in=scope.deleted_withdrawn_versions,
        ).exclude(pk__in=in_scope.values("pk")).filter(
            is_simulated__in=[False, True] if include_simulated else [False],
            is_pilot__in=[False, True] if include_pilot else [False],
        ).count() if scope.deleted_withdrawn_versions else 0
        per_version = {v.pk: in_scope.filter(version=v).count() for v in scope.versions}

    participants = data.participants
    arms = _arm_order(scope, participants)
    kinds = _arm_kinds(scope)
    flow = flow_counts(participants, arms)
    measures = M.participant_measures(participants, data.responses, data.turns, data.llm_calls,
                                      data.predictions, include_simulated=include_simulated)
    calib = calibration_table(data.responses, measures, arms)
    answers = answer_counts(data.responses, measures)
    stats_section = statistics(measures, data.responses, participants, arms)
    lm = fidelity(measures, data.responses, data.predictions, data.learner_models, participants, arms)

    versions = [
        {"number": v.number, "state": v.state, "sha256": v.sha256, "target_sha256": v.target_sha256 or "—",
         "launched_at": _iso(v.launched_at), "participants": per_version[v.pk]}
        for v in scope.versions
    ]
    launched = [v.launched_at for v in scope.versions if v.launched_at]
    return {
        "study": {"slug": scope.study.slug, "title": scope.study.title},
        "versions": versions,
        "launched_at": _iso(min(launched)) if launched else "not launched",
        "commit": git_commit() or "unknown",
        "made_at": _iso(made_at),
        "include_simulated": include_simulated,
        "include_pilot": include_pilot,
        "left_out": left_out,
        "arms": [{"id": a, "kind": kinds.get(a, ""), "color": PALETTE[i % len(PALETTE)]} for i, a in enumerate(arms)],
        "flow": flow,
        "flow_rows": [{"key": key, "label": label, "cells": [flow["arms"][a][key] for a in arms]}
                      for key, label in FLOW_ROWS],
        "flow_svg": flow_svg(flow, arms) if arms else "",
        "n_analysable": int(len(measures)),
        "analysable": {a: int((measures["arm"] == a).sum()) for a in arms},
        "measure_rows": measure_rows(measures, arms, answers),
        "completion": completion(flow, arms),
        "gain_svg": gain_strip_svg(measures, arms) if arms else "",
        "mean_svg": mean_gain_svg(measures, arms) if arms else "",
        "calibration": [dict(r, confidence=fmt(r["confidence"]), accuracy=fmt(r["accuracy"]),
                             ci=_ci(r["ci_low"], r["ci_high"])) for r in calib],
        "calibration_svg": calibration_svg(calib, arms),
        "stats": stats_section,
        "lm": lm,
        "n_boot": N_BOOT,
        "seed": SEED,
        "measures": measures,  # for callers (the command prints a summary); the template does not use it
    }


def report_html(*, slug: str, include_simulated: bool = False, include_pilot: bool = False,
                links: dict | None = None) -> str:
    """Return the report as one self-contained HTML document. `links` (admin only): toggle URLs."""
    context = report_context(slug=slug, include_simulated=include_simulated, include_pilot=include_pilot)
    context.pop("measures")
    context["links"] = links or {}
    return render_to_string("analysis/report.html", context)
