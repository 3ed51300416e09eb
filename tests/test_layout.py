"""The package's shape: each folder one side of one boundary, and imports that only go down.

Read from the source with `ast`, so imports inside functions (the lazy ones) count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "server" / "parakeet_server"

# Who may import what from outside: MLX only in the model process's engine, gRPC only in the
# gRPC layer (and the test launcher, which is a client), HTTP only in the HTTP layer. The
# client's plain-Python formats (srt, vtt) are shared with the HTTP layer, nothing else of it.
MLX = ("mlx", "parakeet_mlx")
GRPC = ("grpc", "grpc_health", "grpc_reflection", "parakeet_client")
HTTP = ("aiohttp",)
SHARED = ("parakeet_client.formats",)
ALLOWED = {
    "engine": {*MLX},
    "api": {*GRPC},
    "testing": {*GRPC},
    "http_api": {*HTTP},
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _top(module: str) -> str:
    """'api' for parakeet_server.api.service, 'domain' for parakeet_server.domain."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def test_mlx_is_imported_only_under_engine_grpc_under_api_and_http_under_http_api() -> None:
    wrong = []
    for module, path in _modules().items():
        allowed = ALLOWED.get(_folder(module), set())
        for imported in _imports(path):
            if imported in SHARED or imported.startswith(tuple(f"{s}." for s in SHARED)):
                continue
            for root in (*MLX, *GRPC, *HTTP):
                if (imported == root or imported.startswith(root + ".")) and root not in allowed:
                    wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_package_has_no_import_cycle() -> None:
    modules = _modules()
    graph = {
        module: {
            imported
            for imported in _imports(path)
            if imported in modules and imported != module and not module.startswith(imported)
        }
        for module, path in modules.items()
    }
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycle = [*trail[trail.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("domain", ""),  # plain data: imports nothing of the package
        ("engine", "api http_api pipeline workers cache audio testing"),
        ("workers", "api http_api pipeline cache audio testing"),
        ("http_api", "api testing"),
        ("pipeline", "api http_api testing"),
        ("cache", "api http_api pipeline workers engine testing"),
        ("audio", "api http_api pipeline workers engine cache testing"),
        ("ops", "api http_api pipeline workers engine testing"),
    ],
)
def test_no_layer_imports_a_layer_above_it(lower: str, upper: str) -> None:
    wrong = []
    for module, path in _modules().items():
        if _top(module) != lower:
            continue
        for imported in _imports(path):
            parts = imported.split(".")
            if parts[0] != "parakeet_server" or len(parts) < 2:
                continue
            if (lower == "domain" and imported != "parakeet_server.domain") or (
                parts[1] in upper.split()
            ):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_server_process_never_loads_mlx() -> None:
    """The gRPC process imports the whole server (and the model process's entry point) but
    leaves MLX to the model process: a crash or a leak in MLX stays there."""
    code = (
        "import sys, parakeet_server.api.server, parakeet_server.__main__\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'parakeet_mlx')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
