"""Packages depend one way: ``daemon`` → ``handlers`` → ``streams``, and no two files import each other.

The imports are read from the source (``ast``), not from a running interpreter, so every import
counts wherever it is written: at the top, inside a function (a lazy import still runs), and
inside ``if TYPE_CHECKING:``.

- **Direction** counts every import, ``TYPE_CHECKING`` ones included: a type named in a signature
  couples the modules as much as a call does (the lower layer cannot be read, type-checked or
  reused without the upper one).
- **Circles** count every import too, ``TYPE_CHECKING`` ones included: a back-reference for types
  still means neither file can be read without the other. Where a module needs something of its
  owner (``daemon.http`` and ``daemon.telemetry`` reading the running daemon), it declares a
  Protocol of what it reads (``OpsTarget``, ``Observed``) instead of importing the owner.

Leaf modules may be imported from anywhere; a leaf imports nothing of reflexd's own but other
leaves (checked here too). A failure names each offending import as ``file:line → module``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streams", "handlers", "daemon")
#: Lower layers first: a module may import its own package and any package before it.
LAYER = {package: rank for rank, package in enumerate(PACKAGES)}
#: Imported by every layer; they import nothing of reflexd's own but each other.
LEAVES = frozenset({"daemon.errors", "daemon.logs"})


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository, e.g. streams/rules/pipeline.py
    line: int
    importer: str  # dotted module name of the file
    target: str  # dotted module name imported (the module itself when a name inside it is imported)
    type_only: bool  # inside ``if TYPE_CHECKING:``

    def __str__(self) -> str:
        return f"{self.file}:{self.line} → {self.target}" + (" (TYPE_CHECKING)" if self.type_only else "")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``node``, with whether it sits in an ``if TYPE_CHECKING:`` body."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, type_only
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk_stmt(stmt, True)
            for stmt in child.orelse:
                yield from _walk_stmt(stmt, type_only)
        else:
            yield from _walk(child, type_only)


def _walk_stmt(stmt: ast.stmt, type_only: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        yield stmt, type_only
    else:
        yield from _walk(stmt, type_only)


def imports_of(source: str, file: str, importer: str, modules: frozenset[str]) -> list[Import]:
    """The imports of one file that name a module among ``modules`` (reflexd's own)."""
    tree = ast.parse(source, filename=file)
    is_package = file.endswith("__init__.py")
    found: list[Import] = []

    def add(node: ast.stmt, name: str, type_only: bool) -> None:
        # ``a.b.c`` when it is a module, else the nearest enclosing module that is one (``a.b``)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != importer:
            item = Import(file, node.lineno, importer, name, type_only)
            if item not in found:  # ``from m import a, b``: one import of m
                found.append(item)

    for node, type_only in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name, type_only)
            continue
        base = node.module or ""
        if node.level:  # relative: resolve against the importing module's package
            package = importer if is_package else importer.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        for alias in node.names:
            # ``from daemon import systemd`` imports the module daemon.systemd
            full = f"{base}.{alias.name}"
            add(node, full if full in modules else base, type_only)
    return found


def scan(root: Path = ROOT) -> list[Import]:
    files = sorted(p for package in PACKAGES for p in (root / package).rglob("*.py"))
    modules = frozenset(module_name(p, root) for p in files)
    out: list[Import] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        out += imports_of(path.read_text(encoding="utf-8"), rel, module_name(path, root), modules)
    return out


def upward(imports: Iterable[Import]) -> list[Import]:
    """Imports from a lower package into a higher one, leaves aside."""
    return [
        i
        for i in imports
        if i.target not in LEAVES and LAYER[i.target.partition(".")[0]] > LAYER[i.importer.partition(".")[0]]
    ]


def circles(imports: Iterable[Import]) -> list[tuple[list[str], list[Import]]]:
    """Each group of files that reach each other: its files, and one circle through them as the
    imports that close it."""
    edges: dict[str, dict[str, Import]] = {}
    for i in imports:
        edges.setdefault(i.importer, {}).setdefault(i.target, i)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    out = []
    for group in groups:
        # walk from the smallest name inside the group until a file repeats: that is one circle
        start = min(group)
        path = [start]
        chain: list[Import] = []
        while True:
            nxt = min(t for t in edges[path[-1]] if t in group)
            chain.append(edges[path[-1]][nxt])
            if nxt in path:
                out.append((sorted(group), chain[path.index(nxt) :]))
                break
            path.append(nxt)
    return out


def _fail_with(title: str, offending: Iterable[Import]) -> None:
    pytest.fail("\n".join([title, *(f"  {i}" for i in offending)]), pytrace=False)


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return scan()


def test_scanner_sees_imports_in_functions_and_type_checking_blocks() -> None:
    """The reader finds lazy and TYPE_CHECKING imports, resolves ``from pkg import module`` and relative
    imports, and flags an upward import and a circle (so a clean result below means something)."""
    modules = frozenset({"streams", "streams.a", "streams.b", "handlers.h", "daemon.errors", "daemon.x"})
    a = (
        "from typing import TYPE_CHECKING\n"
        "import streams.b\n"
        "from daemon.errors import DecodeError\n"
        "if TYPE_CHECKING:\n"
        "    from handlers.h import Tool\n"
        "def later():\n"
        "    from daemon import x\n"
    )
    b = "from . import a\n"
    found = imports_of(a, "streams/a.py", "streams.a", modules) + imports_of(
        b, "streams/b.py", "streams.b", modules
    )
    assert [str(i) for i in found] == [
        "streams/a.py:2 → streams.b",
        "streams/a.py:3 → daemon.errors",
        "streams/a.py:5 → handlers.h (TYPE_CHECKING)",
        "streams/a.py:7 → daemon.x",
        "streams/b.py:1 → streams.a",
    ]
    assert [str(i) for i in upward(found)] == [
        "streams/a.py:5 → handlers.h (TYPE_CHECKING)",
        "streams/a.py:7 → daemon.x",
    ]
    assert [(files, [str(i) for i in chain]) for files, chain in circles(found)] == [
        (["streams.a", "streams.b"], ["streams/a.py:2 → streams.b", "streams/b.py:1 → streams.a"])
    ]


def test_no_import_circle_between_files(imports: list[Import]) -> None:
    """No two files import each other, directly or through others (TYPE_CHECKING imports included)."""
    for files, chain in circles(imports):
        _fail_with(f"import circle among {', '.join(files)}, e.g.:", chain)


def test_streams_imports_neither_handlers_nor_daemon(imports: list[Import]) -> None:
    """``streams`` (sources, events, rules) never imports ``handlers`` or ``daemon``, leaf modules aside."""
    bad = [i for i in upward(imports) if i.importer.startswith("streams")]
    if bad:
        _fail_with(f"streams imports up (allowed leaves: {', '.join(sorted(LEAVES))}):", bad)


def test_handlers_do_not_import_daemon(imports: list[Import]) -> None:
    """``handlers`` (tools and their runner) never import ``daemon``, leaf modules aside."""
    bad = [i for i in upward(imports) if i.importer.startswith("handlers")]
    if bad:
        _fail_with(f"handlers import daemon (allowed leaves: {', '.join(sorted(LEAVES))}):", bad)


def test_leaves_import_only_leaves(imports: list[Import]) -> None:
    """A leaf module (importable from every layer) imports nothing of reflexd's own but other leaves."""
    bad = [i for i in imports if i.importer in LEAVES and i.target not in LEAVES]
    if bad:
        _fail_with("a leaf module imports reflexd code:", bad)
