"""The floors hold in the source, beyond what import-linter sees (it checks imports; `make test` runs it):
no app looks another up by name, and no project import hides behind an "app may not exist" guard."""
from __future__ import annotations

import ast
from pathlib import Path

WEBAPP = Path(__file__).resolve().parent.parent / "webapp"
GUARDS = {"ImportError", "ModuleNotFoundError", "LookupError", "Exception"}


def _sources(root: Path = WEBAPP):
    for path in sorted(root.rglob("*.py")):
        if "migrations" not in path.parts:
            yield path, path.read_text()


def _project_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").startswith("webapp")
    return isinstance(node, ast.Import) and any(a.name.startswith("webapp") for a in node.names)


def _caught(handler: ast.ExceptHandler) -> set[str]:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {k.id for k in kinds if isinstance(k, ast.Name)}


def guarded_imports(root: Path = WEBAPP) -> list[str]:
    """`try: <project import> ... except ImportError|Exception|...:` blocks, as "file:line"."""
    found = []
    for path, text in _sources(root):
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Try):
                continue
            if any(_project_import(stmt) for stmt in node.body) and any(
                    _caught(handler) & GUARDS for handler in node.handlers):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_app_looks_up_a_model_by_name():
    found = [str(path.relative_to(WEBAPP)) for path, text in _sources() if "apps.get_model" in text]
    assert found == []


def test_no_project_import_is_guarded():
    assert guarded_imports() == []
    assert [str(p.relative_to(WEBAPP)) for p, text in _sources() if "NoReverseMatch" in text] == []
