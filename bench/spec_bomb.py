#!/usr/bin/env python3
"""Study-file bombs: CPU seconds and peak memory of reading each attack, and of the largest files accepted.

Each attempt is read with `studies.spec.study_text_parse` (what the shell loader and every upload call) twice:
once timed with getrusage (user + system CPU of this process), once under tracemalloc for the peak of
Python's allocations (tracemalloc slows Python down, so the two are not measured together). Prints one line
per attempt and the load average before and after, since the machine may be shared. No database needed.

    .venv/bin/python bench/spec_bomb.py [--repeat 3]
"""
import argparse
import os
import resource
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studies.spec import (  # noqa: E402
    MAX_YAML_ALIASES,
    MAX_YAML_BYTES,
    MAX_YAML_NODES,
    StudyFileInvalid,
    _yaml_events_check,
    study_text_parse,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "studies" / "examples" / "loan-approval"


def alias_bomb(levels: int = 7, width: int = 9) -> str:
    lines = ["slug: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * width) + "]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def billion_laughs() -> str:
    lines = ['lol0: &lol0 "lol"'] + [f"lol{n}: &lol{n} [" + ",".join([f"*lol{n - 1}"] * 10) + "]" for n in range(1, 10)]
    return "\n".join(lines) + "\n"


def attempts() -> dict[str, str]:
    example = (EXAMPLE / "study.yaml").read_text(encoding="utf-8")
    return {
        "alias bomb (7 levels of 9)": alias_bomb(),
        "billion laughs (9 levels of 10)": billion_laughs(),
        "deep flow nesting (100k '[')": "slug: x\ndeep: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "deep block nesting (200 levels)": "slug: x\n" + "".join(f"{' ' * i}k{i}:\n" for i in range(200)),
        "endless alias": "slug: x\nloop: &loop [1, [2, *loop]]\n",
        "too many aliases": "one: &one 1\nmany: [" + ", ".join(["*one"] * (MAX_YAML_ALIASES + 1)) + "]\n",
        "oversize (512 KB + 1)": "slug: big\n# " + "x" * MAX_YAML_BYTES + "\n",
        # accepted shapes, at the limits: what the caps allow a file to cost
        "accepted: nodes just under the cap": "slug: x\nmany:\n" + "".join(f"  - {i}\n" for i in range(MAX_YAML_NODES - 10)),
        "accepted: 500 KB of text": "slug: x\ntext: |\n" + ("  " + "lorem ipsum dolor sit amet " * 3 + "\n") * 6000,
        "the example study.yaml": example,
    }


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read(text: str) -> str:
    _yaml_events_check.cache_clear()  # measure the walk every time (an upload's second check is a cache hit)
    try:
        study_text_parse(text, {})
    except StudyFileInvalid as invalid:
        first = invalid.errors[0]
        return f"{len(invalid.errors)} error(s), first: line {first.line}: {first.message[:60]}"
    return "accepted"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per attempt (the best is printed)")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'attempt':36} {'bytes':>9} {'CPU s':>7} {'peak MB':>8}  outcome")
    for name, text in attempts().items():
        times = []
        for _ in range(args.repeat):
            start = cpu_s()
            outcome = read(text)
            times.append(cpu_s() - start)
        tracemalloc.start()
        read(text)
        peak = tracemalloc.get_traced_memory()[1] / 1024 / 1024
        tracemalloc.stop()
        print(f"{name:36} {len(text.encode()):>9,} {min(times):>7.3f} {peak:>8.1f}  {outcome}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
