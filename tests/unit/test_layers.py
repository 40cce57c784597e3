"""Imports flow one way (STYLE.md, "Boundaries"): only fs/ imports pyfuse3, backend/
imports neither fs/ nor server/, server/ never imports fs/. Checked on the ast of every
module, including imports inside functions, relative imports and `import_module("...")`."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = {"fs": "cloudfs.fs", "backend": "cloudfs.backend", "server": "cloudfs.server"}

FORBIDDEN: dict[str, list[tuple[str, str]]] = {
    "fs": [],
    "backend": [
        ("pyfuse3", "only fs/ imports pyfuse3"),
        ("cloudfs.fs", "backend/ imports neither fs/ nor server/"),
        ("cloudfs.server", "backend/ imports neither fs/ nor server/"),
    ],
    "server": [
        ("pyfuse3", "only fs/ imports pyfuse3"),
        ("cloudfs.fs", "server/ never imports fs/"),
    ],
}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    statement: str
    module: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.statement}` imports {self.module} ({self.rule})"


def package_of(rel_path: Path) -> str:
    """The package a module's relative imports resolve against: `backend/x.py` and
    `backend/__init__.py` both import relative to `cloudfs.backend`."""
    layer, *subdirs = rel_path.parent.parts
    return ".".join([LAYERS[layer], *subdirs])


def resolve(module: str | None, level: int, package: str) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".")
    if level - 1 >= len(parts):
        return "." * level + (module or "")  # above the top-level package: fails at import time anyway
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _dynamic_import(node: ast.Call) -> str | None:
    """`importlib.import_module("x")`, `import_module("x")` or `__import__("x")` with a literal name."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
        return arg.value
    return None


def imported_modules(tree: ast.AST, package: str) -> Iterator[tuple[ast.AST, str]]:
    """Every module a statement may import. `from a import b` may import module `a.b`,
    so both `a` and `a.b` are reported."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module, node.level, package)
            yield node, base
            for alias in node.names:
                if alias.name != "*":
                    yield node, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call):
            name = _dynamic_import(node)
            if name is not None:
                yield node, name


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def check_source(rel_path: Path, source: str) -> list[Violation]:
    layer = rel_path.parts[0]
    tree = ast.parse(source, filename=str(rel_path))
    found: dict[tuple[int, str], Violation] = {}
    for node, module in imported_modules(tree, package_of(rel_path)):
        for prefix, rule in FORBIDDEN[layer]:
            if _within(module, prefix):
                statement = ast.unparse(node)
                found.setdefault((node.lineno, prefix), Violation(rel_path.as_posix(), node.lineno, statement, prefix, rule))
    return sorted(found.values(), key=lambda v: (v.line, v.module))


def layer_files() -> list[Path]:
    return sorted(path.relative_to(REPO) for layer in LAYERS for path in (REPO / layer).rglob("*.py"))


def test_import_rules_hold() -> None:
    violations: list[Violation] = []
    for rel_path in layer_files():
        try:
            source = (REPO / rel_path).read_text(encoding="utf-8")
            violations += check_source(rel_path, source)
        except SyntaxError as exc:
            pytest.fail(f"{rel_path}: cannot parse: {exc}")
    assert not violations, "import rules broken (see STYLE.md, Boundaries):\n" + "\n".join(map(str, violations))


def test_every_layer_is_walked() -> None:
    files = {p.as_posix() for p in layer_files()}
    for layer in LAYERS:
        assert f"{layer}/__init__.py" in files
    assert {"backend/stores/store.py", "backend/stores/localstore.py", "server/blobs.py"} <= files


def test_walker_sees_real_imports() -> None:
    """Guards against a walker that silently finds nothing."""
    rel_path = Path("server/blobs.py")
    tree = ast.parse((REPO / rel_path).read_text(encoding="utf-8"))
    modules = {module for _, module in imported_modules(tree, package_of(rel_path))}
    assert {"cloudfs.backend.stores.localstore", "cloudfs.server.files", "cloudfs.server.app", "anyio"} <= modules
    rel_path = Path("backend/stores/store.py")
    tree = ast.parse((REPO / rel_path).read_text(encoding="utf-8"))
    modules = {module for _, module in imported_modules(tree, package_of(rel_path))}
    assert {"cloudfs.backend.protocol.wire", "cloudfs.backend.stores.localstore", "cloudfs.backend.stores.s3store"} <= modules


@pytest.mark.parametrize(("path", "source", "module"), [
    ("backend/x.py", "import pyfuse3", "pyfuse3"),
    ("backend/x.py", "from pyfuse3 import FUSEError", "pyfuse3"),
    ("backend/x.py", "import pyfuse3.asyncio", "pyfuse3"),
    ("backend/x.py", "import cloudfs.fs.ops as ops", "cloudfs.fs"),
    ("backend/x.py", "from cloudfs.server import app", "cloudfs.server"),
    ("backend/x.py", "from cloudfs import server", "cloudfs.server"),
    ("backend/x.py", "from ..server import app", "cloudfs.server"),
    ("backend/x.py", "from ..fs.ops import Operations", "cloudfs.fs"),
    ("backend/x.py", "from .. import fs", "cloudfs.fs"),
    ("backend/__init__.py", "from ..server.app import context", "cloudfs.server"),
    ("backend/sub/x.py", "from ...fs import ops", "cloudfs.fs"),
    ("backend/x.py", "def later():\n    from cloudfs.server import app", "cloudfs.server"),
    ("backend/x.py", "import importlib\nimportlib.import_module('cloudfs.fs.ops')", "cloudfs.fs"),
    ("backend/x.py", "__import__('pyfuse3')", "pyfuse3"),
    ("server/x.py", "import pyfuse3", "pyfuse3"),
    ("server/x.py", "from ..fs import ops", "cloudfs.fs"),
    ("server/x.py", "from cloudfs.fs.ops import Operations", "cloudfs.fs"),
    ("server/x.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cloudfs import fs", "cloudfs.fs"),
])
def test_checker_catches(path: str, source: str, module: str) -> None:
    violations = check_source(Path(path), source)
    assert [v.module for v in violations] == [module]
    message = str(violations[0])
    assert message.startswith(f"{path}:{violations[0].line}: `") and module in message


@pytest.mark.parametrize(("path", "source"), [
    ("fs/x.py", "import pyfuse3\nfrom pyfuse3 import FUSEError"),
    ("fs/x.py", "from ..backend import store\nfrom cloudfs.backend.stores.store import NoSuchKeyError"),
    ("backend/x.py", "from .store import ObjectStore\nfrom . import wire\nimport cloudfs.backend.protocol.names"),
    ("backend/x.py", "import fsspec\nimport serverless\nfrom cloudfs import backend\nimport pyfuse3x"),
    ("server/x.py", "from cloudfs.backend import wire\nfrom ..backend.store import chunk_key\nfrom . import files"),
    ("server/x.py", "import cloudfs.fsck\nfrom cloudfs import backend"),
])
def test_checker_allows(path: str, source: str) -> None:
    assert check_source(Path(path), source) == []
