"""The import direction of docs/architecture.md holds: studies <- explainers <- participants <- analysis <- console.

An app may import only from apps to its left, function-local imports included, and no app imports the dev and
test tooling (devtools/, tests/, bench/, run.py)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ["studies", "explainers", "participants", "analysis", "console"]
TOOLING = {"devtools", "tests", "bench", "run", "conftest"}


def wrong_imports(app: str, source: str) -> list[tuple[int, str]]:
    """(line, module) of every import in `source`, a module of `app`, that goes against the direction."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            root = module.split(".")[0]
            if root in TOOLING or (root in APPS and APPS.index(root) > APPS.index(app)):
                found.append((node.lineno, module))
    return found


def test_the_checker_finds_an_upward_a_local_and_a_tooling_import():
    source = ("from studies.models import Study\n"
              "import console.api\n"
              "def f():\n    from analysis import report\n    import devtools.fakeprolific\n")
    assert wrong_imports("explainers", source) == [(2, "console.api"), (4, "analysis"), (5, "devtools.fakeprolific")]
    assert wrong_imports("console", source) == [(5, "devtools.fakeprolific")]


def test_no_app_imports_against_the_direction():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for app in APPS for path in sorted((ROOT / app).rglob("*.py"))
             for line, module in wrong_imports(app, path.read_text(encoding="utf-8"))]
    assert not wrong, "\n".join(wrong)


def test_the_map_names_every_app_and_module_folder():
    """docs/architecture.md names each app and each package inside one, so a newcomer finds it in one hop."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = [f"{p.parent.relative_to(ROOT)}/" for app in APPS for p in (ROOT / app).glob("*/__init__.py")
                if p.parent.name not in ("migrations", "management", "templatetags")]
    missing = [name for name in [f"{app}/" for app in APPS] + packages if f"`{name}" not in text]
    assert not missing, f"docs/architecture.md does not name {missing}"
