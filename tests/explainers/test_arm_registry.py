"""The arm kinds are objects registered by kind (docs/arms.md): the lifecycle never looks at an arm's kind,
the learner-model package touches no database, and the fake provider holds no teaching logic."""
import ast
import re
from pathlib import Path

from explainers.arms import ARMS, arm_behaviour
from explainers.arms.base import Arm
from studies.spec import ARM_KINDS

EXPLAINERS = Path(__file__).resolve().parents[2] / "explainers"


def test_every_kind_a_study_file_may_name_is_registered_with_its_own_object():
    assert set(ARMS) == set(ARM_KINDS)
    for kind in ARM_KINDS:
        behaviour = arm_behaviour({"kind": kind})
        assert isinstance(behaviour, Arm) and behaviour.kind == kind


def test_only_the_registry_reads_an_arms_kind():
    pattern = re.compile(r"""(\[["']kind["']\]|\.kind)\s*(==|!=|in)\s*[(\[{]?\s*["'](static|chat|agentic|tutor)["']""")
    offenders = [f"{path.relative_to(EXPLAINERS)}:{n}" for path in EXPLAINERS.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    assert '"kind"]' not in (EXPLAINERS / "services.py").read_text()


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_learner_package_and_the_arms_write_nothing_and_the_learner_package_reads_nothing():
    for path in (EXPLAINERS / "learner").glob("*.py"):
        imports = imported_modules(path)
        assert not any("models" in name or name.startswith("django.db") for name in imports), (path.name, imports)
    for path in (EXPLAINERS / "arms").glob("*.py"):
        text = path.read_text()
        writes = r"objects\.(create|bulk_create|get_or_create|update_or_create)\(|\.(save|delete)\(|\)\.update\("
        assert not re.search(writes, text), path.name
        assert "services" not in imported_modules(path), path.name


def test_the_fake_provider_holds_no_teaching_logic():
    text = (EXPLAINERS / "fakellm.py").read_text()
    for teaching in ("next_move", "mastery", "A quick check", "Let us look at", "def scripted"):
        assert teaching not in text
