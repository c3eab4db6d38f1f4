"""The layering of docs/architecture.md, checked over the real import graph.

Every module of the package belongs to one layer. A module imports only from its own
layer or the layers below it; front ends never import one another; there is no import
circle; no module grows past MAX_LINES. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "newsletter"
MAX_LINES = 500

# Highest first. A name is a module (``newsletter.tick``) or a package prefix (``…sending``).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry", ("newsletter", "newsletter.devserver")),  # the factory; make run's launcher
    (
        "front ends",
        (
            "newsletter.web",
            "newsletter.admin",
            "newsletter.api",
            "newsletter.cli",
            "newsletter.bounces_cli",
        ),
    ),
    (
        "services",
        (
            "newsletter.tick",
            "newsletter.campaigns",
            "newsletter.subscriptions",
            "newsletter.bounces",
            "newsletter.consent",
            "newsletter.progress",
            "newsletter.auth",
            "newsletter.api_tokens",
            "newsletter.editor",
            "newsletter.editions",
            "newsletter.form_texts",
            "newsletter.data_export",
            "newsletter.look",
        ),
    ),
    ("sending", ("newsletter.sending",)),
    ("mail", ("newsletter.mail",)),
    (
        "foundations",
        (
            "newsletter.campaign_status",
            "newsletter.erasure",
            "newsletter.stats",
            "newsletter.queue",
            "newsletter.models",
            "newsletter.db_clock",
            "newsletter.extensions",
            "newsletter.config",
            "newsletter.tokens",
            "newsletter.addresses",
            "newsletter.slots",
            "newsletter.logs",
            "newsletter.sanitizer",
            "newsletter.verp",
            "newsletter.dsn",
            "newsletter.embedded_redis",
            "newsletter.i18n",
        ),
    ),
]
# Each front end stands alone: none of them imports another.
FRONT_ENDS = (
    "newsletter.web",
    "newsletter.admin",
    "newsletter.api",
    "newsletter.cli",
    "newsletter.bounces_cli",
)


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def owner(name: str, prefixes) -> str | None:
    """The longest prefix in ``prefixes`` that ``name`` is or lies under."""
    # The package itself (the factory) owns no submodules: they all have layers of their own.
    matches = [p for p in prefixes if name == p or ("." in p and name.startswith(p + "."))]
    return max(matches, key=len, default=None)


def layer_of(name: str) -> int:
    best = (-1, None)
    for index, (_, members) in enumerate(LAYERS):
        found = owner(name, members)
        if found and len(found) > len(best[1] or ""):
            best = (index, found)
    if best[1] is None:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS and docs/architecture.md")
    return best[0]


def imports_of(name: str) -> set[str]:
    """The package modules ``name`` imports (``from x import y`` counts y when y is a module)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from newsletter import stats`` imports the module newsletter.stats; only a
            # name that is no module (a function, a class) imports ``base`` itself.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_module_imports_from_a_layer_above_it():
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name, targets in GRAPH.items()
        for target in targets
        if layer_of(target) < layer_of(name)
    ]
    assert upward == []


def test_front_ends_do_not_import_one_another():
    crossing = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if owner(name, FRONT_ENDS)
        and owner(target, FRONT_ENDS)
        and owner(name, FRONT_ENDS) != owner(target, FRONT_ENDS)
    ]
    assert crossing == []


def test_there_is_no_import_circle():
    # Package __init__ modules import their own submodules; that is no circle of concerns.
    def edges(name):
        return {t for t in GRAPH[name] if not (name.startswith(t + ".") and t != "newsletter")}

    state: dict[str, str] = {}
    circles = []

    def visit(name, trail):
        state[name] = "open"
        for target in sorted(edges(name)):
            if state.get(target) == "open":
                circles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state and name != "newsletter":
            visit(name, [name])
    assert circles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_the_size_limit(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concern"
