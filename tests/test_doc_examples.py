"""Every YAML example in the documentation validates.

Each ```yaml block of every `docs/*.md` page and of `README.md` is read and validated with
`studies.spec.study_text_parse` against the example study's assets (`studies/examples/loan-approval/`):

- a block with a top-level `slug:` is a full study file, validated as it stands;
- any other block is a fragment, merged into the example study's `study.yaml` at its top-level key(s) and
  validated as the whole: a mapping is merged key by key (recursively), a list of mappings with `id`s
  entry by entry (an entry with an example entry's id is merged into it, a new id is appended), and any
  other value replaces the example's. The example's `allocation.block_size` is left to its default (the
  sum of the weights) first, so that a fragment may add arms.

A block whose line above is `<!-- not-validated: reason -->` is skipped; the reason says why (a block
that shows a mistake, or one that is not a study file). A block that is not YAML at all fails.
"""
import copy
import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from studies.spec import StudyFileInvalid, _assets_read, study_text_parse

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "studies" / "examples" / "loan-approval"
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
SKIP = re.compile(r"^\s*<!--\s*not-validated:\s*(?P<reason>.+?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```yaml\s*$")


def yaml_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, text, skip reason or None) of every ```yaml block of the page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines):
        opening = FENCE.match(line)
        if not opening:
            continue
        end = next(n for n in range(number + 1, len(lines)) if lines[n].strip() == "```")
        indent = len(opening.group("indent"))
        text = "\n".join(body[indent:] for body in lines[number + 1:end]) + "\n"
        above = next((lines[n] for n in range(number - 1, -1, -1) if lines[n].strip()), "")
        skip = SKIP.match(above)
        blocks.append((number + 1, text, skip.group("reason") if skip else None))
    return blocks


def merged(base, fragment):
    """The fragment merged into the base (see the module's docstring)."""
    if isinstance(base, dict) and isinstance(fragment, dict):
        out = dict(base)
        for key, value in fragment.items():
            out[key] = merged(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(fragment, list) and fragment and all(
            isinstance(entry, dict) and "id" in entry for entry in fragment + base):
        out = list(base)
        index = {entry["id"]: i for i, entry in enumerate(out)}
        for entry in fragment:
            if entry["id"] in index:
                out[index[entry["id"]]] = merged(out[index[entry["id"]]], entry)
            else:
                out.append(entry)
        return out
    return fragment


def dumped(data) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.allow_unicode = True
    from io import StringIO

    out = StringIO()
    yaml.dump(data, out)
    return out.getvalue()


EXAMPLES = [
    pytest.param(page, line, text, reason, id=f"{page.relative_to(ROOT)}:{line}")
    for page in PAGES for line, text, reason in yaml_blocks(page)
]


def test_the_documentation_has_yaml_examples_and_the_study_file_page_a_full_one():
    pages = {page.name for page, *_ in (p.values for p in EXAMPLES)}
    assert "study-file.md" in pages
    full = [text for page, _, text, _ in (p.values for p in EXAMPLES) if page.name == "study-file.md"
            and re.search(r"^slug:", text, re.MULTILINE)]
    assert full, "docs/study-file.md has no full study file"


@pytest.mark.parametrize(("page", "line", "text", "reason"), EXAMPLES)
def test_every_yaml_example_in_the_docs_validates(page, line, text, reason):
    if reason is not None:
        pytest.skip(f"not validated: {reason}")
    fragment = YAML(typ="safe", pure=True).load(text)
    assert isinstance(fragment, dict), f"{page.name}, line {line}: a YAML example should be a mapping"
    assets = _assets_read(EXAMPLE)
    if "slug" in fragment:
        study = text
    else:
        base = YAML(typ="safe", pure=True).load((EXAMPLE / "study.yaml").read_text(encoding="utf-8"))
        base = copy.deepcopy(base)
        (base.get("allocation") or {}).pop("block_size", None)
        study = dumped(merged(base, fragment))
    try:
        study_text_parse(study, assets)
    except StudyFileInvalid as invalid:
        pytest.fail(f"{page.name}, the yaml block at line {line} does not validate:\n{invalid}")
