"""Every Python and shell block of the README and docs/ runs here, so the docs
cannot drift from the code.

- Python blocks run as scripts, in a process of their own, against the
  emulator; a block that makes a FastAPI ``app`` is then served, a key made,
  and each of its routes asked with it (no 5xx).
- The shell blocks of a page run in order, in one bash, against the emulator
  and a demo server: ``keystore`` is the real command line, ``curl`` the real
  one (``127.0.0.1:8000`` is the demo server), and each block gets a fresh
  ``$KEY`` (scope reports:read) and ``$KEY_ID``. ``gcloud``, ``npx``, ``pip``
  and ``./emulator.sh`` are stand-ins that log what they were asked and run
  nothing; every ``gcloud`` command and flag is then checked against the
  Cloud SDK's own command tree, installed here.
"""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from keystore import ApiKeyStore, Settings
from tests.conftest import ROOT, running_server

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"sh", "bash", "shell"}
PYTHONS = {"python", "py"}
#: The Cloud SDK's command tree (gcloud's static completion data).
GCLOUD_TREE = Path("/usr/lib/google-cloud-sdk/data/cli/gcloud_completions.py")
#: Pages whose commands name a project of their own: the demo server uses it.
PROJECTS = {"deploy.md": "my-project"}

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


def blocks(page: Path) -> Iterator[tuple[str, str]]:
    """(language, code) of each fenced block of ``page``."""
    for match in _FENCE.finditer(page.read_text()):
        yield match[1].lower(), match[2]


def test_every_page_is_read() -> None:
    langs = {lang for page in PAGES for lang, _ in blocks(page)}
    assert {"python", "sh"} <= langs
    assert sum(1 for page in PAGES for _ in blocks(page)) > 20


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_python_blocks_run(page: Path, settings: Settings, tmp_path: Path) -> None:
    code = [code for lang, code in blocks(page) if lang in PYTHONS]
    for i, block in enumerate(code):
        script = tmp_path / f"block{i}.py"
        script.write_text(block + _SERVE_APP)
        done = subprocess.run(
            [sys.executable, str(script)],
            env=_env(settings),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{page.name} block {i}:\n{block}\n{done.stderr}"


# Appended to a Python block: serve the app it made, if any, and ask it.
_SERVE_APP = textwrap.dedent(
    """

    def _serve() -> None:
        import asyncio
        import httpx
        from fastapi import FastAPI
        from keystore import get_store

        made_app = globals().get("app")
        if not isinstance(made_app, FastAPI):
            return

        async def ask() -> None:
            async with made_app.router.lifespan_context(made_app):
                made = await get_store().create(name="docs", scopes=["reports:read"])
                transport = httpx.ASGITransport(app=made_app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://docs"
                ) as client:
                    paths = [
                        route.path
                        for route in made_app.routes
                        if "GET" in getattr(route, "methods", ())
                        and "{" not in route.path
                    ]
                    for path in paths:
                        r = await client.get(path, headers={"x-api-key": made.key})
                        assert r.status_code < 500, (path, r.status_code, r.text)

        asyncio.run(ask())


    _serve()
    """
)


@pytest.mark.anyio
@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
async def test_shell_blocks_run(page: Path, settings: Settings, tmp_path: Path) -> None:
    code = [code for lang, code in blocks(page) if lang in SHELLS]
    if not code:
        return
    project = PROJECTS.get(page.name, "demo-keystore")
    settings = settings.model_copy(update={"project": project})
    keys = []
    async with ApiKeyStore(settings) as store:
        for _ in code:
            made = await store.create(name="docs", scopes=["reports:read"])
            keys.append((made.key, made.record.id))
    shims = _shims(tmp_path / "shims")
    env = {
        **_env(settings),
        "PATH": f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SHIM_LOG": str(tmp_path / "shims.log"),
    }
    server_env = {k: v for k, v in env.items() if k.startswith(("KEYSTORE_", "GOOGLE"))}
    with running_server(tmp_path, server_env) as server:
        env["DEMO_URL"] = server.base
        script = ["set -euo pipefail"]
        for (key, key_id), block in zip(keys, code, strict=True):
            script.append(f"export KEY={shlex.quote(key)} KEY_ID={key_id}")
            script.append(block.replace("./emulator.sh", f"{shims}/emulator.sh"))
        work = tmp_path / "work"
        work.mkdir()
        done = subprocess.run(
            ["bash", "-c", "\n".join(script).replace(".venv/bin/pip", f"{shims}/pip")],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, f"{page.name}:\n{done.stdout}\n{done.stderr}"
    for tool, args in _logged(tmp_path / "shims.log"):
        _CHECKS[tool](args)


def _env(settings: Settings) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KEYSTORE_") and k != "GOOGLE_CLOUD_PROJECT"
    }
    return {
        **base,
        "GOOGLE_CLOUD_PROJECT": settings.project or "demo-keystore",
        "KEYSTORE_COLLECTION": settings.collection,
        "KEYSTORE_OWNERS_COLLECTION": settings.owners_collection,
        "KEYSTORE_LOG_LEVEL": "WARNING",
    }


_LOG = (
    "python3 -c 'import json, sys; "
    'open(sys.argv[1], "a").write(json.dumps(sys.argv[2:]) + "\\n")\' "$SHIM_LOG"'
)
_SHIM_SCRIPTS = {
    # Logs; says the service's URL when asked for it.
    "gcloud": f'{_LOG} gcloud "$@"\n'
    'case " $* " in *" describe "*) echo "$DEMO_URL";; esac',
    "npx": f'{_LOG} npx "$@"',
    "pip": f'{_LOG} pip "$@"',
    "emulator.sh": f'{_LOG} emulator.sh "$@"',
    # The real curl, with the docs' local address made the demo server's.
    "curl": 'args=()\nfor a in "$@"; do\n'
    '  a="${a//http:\\/\\/127.0.0.1:8000/$DEMO_URL}"\n'
    '  args+=("${a//http:\\/\\/localhost:8000/$DEMO_URL}")\n'
    'done\nexec /usr/bin/curl "${args[@]}"',
}


def _shims(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, body in _SHIM_SCRIPTS.items():
        path = folder / name
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    return folder


def _logged(log: Path) -> Iterator[tuple[str, list[str]]]:
    if log.exists():
        for line in log.read_text().splitlines():
            tool, *args = json.loads(line)
            yield tool, args


@cache
def _gcloud_tree() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("gcloud_tree", GCLOUD_TREE)
    assert spec is not None and spec.loader is not None, "no Cloud SDK here"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tree: dict[str, Any] = module.STATIC_COMPLETION_CLI_TREE
    return tree


def check_gcloud(args: list[str]) -> None:
    """The command exists, and each flag is one of its own or gcloud's."""
    tree = _gcloud_tree()
    node, path = tree, []
    tokens = list(args)
    while tokens and tokens[0] in node.get("commands", {}):
        path.append(tokens[0])
        node = node["commands"][tokens.pop(0)]
    assert path and not node.get("commands"), f"not a gcloud command: {args}"
    flags = {**tree["flags"], **node["flags"]}
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--"):
            continue  # a positional argument
        name, has_value, _ = token.partition("=")
        kind = flags.get(name)
        if kind is None and name.startswith("--no-"):
            kind = flags.get("--" + name[5:])
            assert kind == "bool", f"gcloud {' '.join(path)}: no flag {name}"
            continue
        assert kind is not None, f"gcloud {' '.join(path)}: no flag {name}"
        if kind != "bool" and not has_value:
            tokens.pop(0)  # its value


def check_npx(args: list[str]) -> None:
    """Only the Firebase CLI deploying the rules that firebase.json names."""
    assert args[:2] == ["firebase", "deploy"], args
    pairs = zip(args, [*args[1:], ""], strict=True)
    only = [a.partition("=")[2] or b for a, b in pairs if a.startswith("--only")]
    assert only == ["firestore:rules"], args
    config = json.loads((ROOT / "firebase.json").read_text())
    assert config["firestore"]["rules"] == "firestore.rules"


def check_pip(args: list[str]) -> None:
    assert args[0] == "install" and args[1] in (".", ".[server]", ".[demo]"), args


def check_emulator_sh(args: list[str]) -> None:
    commands = {"serve", "test", "lint", "start", "stop", "status"}
    assert args[0] in commands | {"auth-start", "auth-stop"}, args


_CHECKS = {
    "gcloud": check_gcloud,
    "npx": check_npx,
    "pip": check_pip,
    "emulator.sh": check_emulator_sh,
}


def test_the_gcloud_check_refuses_what_gcloud_would() -> None:
    check_gcloud(["run", "deploy", "s", "--no-cpu-throttling", "--region", "r"])
    for wrong in (
        ["run", "deploy", "s", "--no-such-flag"],
        ["run", "deploy", "s", "--no-region"],  # not a boolean flag
        ["run", "launch", "s"],
    ):
        with pytest.raises(AssertionError):
            check_gcloud(wrong)
