"""keystore uses its dependencies through their public APIs only."""

import ast

from tests.conftest import ROOT


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[str]:
    """Private names of other packages that ``source`` imports or reads.

    An attribute is keystore's own when it is read from ``self`` or ``cls``;
    any other ``x._y`` could be another package's.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "keystore":
                continue
            names = [*node.module.split("."), *(a.name for a in node.names)]
            found += [f"from {node.module} import {n}" for n in names if _private(n)]
        elif isinstance(node, ast.Import):
            found += [
                f"import {a.name}"
                for a in node.names
                if any(_private(part) for part in a.name.split("."))
            ]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_keystore_reads_no_private_name_of_another_package() -> None:
    modules = sorted((ROOT / "keystore").rglob("*.py"))
    assert len(modules) > 30
    found = {
        str(path): uses for path in modules if (uses := private_uses(path.read_text()))
    }
    assert found == {}


def test_only_the_firestore_package_imports_google_or_grpc() -> None:
    """Google's and gRPC's types and errors stay behind one boundary."""
    outside = [
        path
        for path in sorted((ROOT / "keystore").rglob("*.py"))
        if "_firestore" not in path.parts
    ]
    found = {}
    for path in outside:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            roots = {name.split(".")[0] for name in names}
            if roots & {"google", "grpc"}:
                found[str(path.relative_to(ROOT))] = names
    assert found == {}


def test_the_check_finds_private_names() -> None:
    source = """
from google.cloud.firestore_v1 import _helpers
from grpc.aio import _channel
import grpc._cython
client._firestore_api.transport.close()
self._mine = other._theirs
"""
    assert sorted(private_uses(source)) == [
        "client._firestore_api (line 5)",
        "from google.cloud.firestore_v1 import _helpers",
        "from grpc.aio import _channel",
        "import grpc._cython",
        "other._theirs (line 6)",
    ]
