"""The published package: the wheel holds keystore only, and installs and runs offline.

No emulator: the wheel is built, read and installed into a fresh virtualenv, and the
installed ``keystore`` is imported and its command run outside the checkout.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

import keystore

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Built:
    """A wheel and the copy of the checkout it was built from."""

    source: Path
    wheel: Path


def run(argv: Sequence[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH: it could put the checkout's keystore before the installed one.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The wheel, built offline from a copy of the checkout (api/, tests/ and all).

    A copy, because the build leaves build/ and an egg-info beside the sources, and
    a stale build/ in the checkout would end up in the wheel. Hidden files (.git,
    .venv, .env) are not copied.
    """
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".*", "build", "dist", "*.egg-info", "__pycache__"
        ),
    )
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation"]
    r = run([*build, "--outdir", work / "dist", source], cwd=work)
    assert r.returncode == 0, r.stderr
    # A deprecated setting builds today and fails with a later setuptools.
    assert "deprecated" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    (wheel,) = (work / "dist").glob("*.whl")
    return Built(source, wheel)


def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode())


def test_the_wheel_holds_the_library_only(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        names = archive.namelist()
    dist_info = f"firestore_keystore-{keystore.__version__}.dist-info"
    # Nothing else at the top: no api/, tests/ or benchmarks/ beside keystore/.
    assert {name.split("/")[0] for name in names} == {"keystore", dist_info}
    shipped = {name for name in names if name.startswith("keystore/")}
    sources = built.source / "keystore"
    assert shipped == {
        f"keystore/{path.relative_to(sources).as_posix()}"
        for path in sources.rglob("*")
        if path.is_file()
    }
    assert "keystore/py.typed" in shipped and "keystore/cli.py" in shipped
    assert f"{dist_info}/entry_points.txt" in names


def test_the_metadata_names_the_distribution_and_its_needs(built: Built) -> None:
    meta = metadata(built.wheel)
    assert meta["Name"] == "firestore-keystore"
    assert meta["Version"] == keystore.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist") or []
    # The server is the demo app's, not the library's.
    assert [r for r in requires if "uvicorn" in r] == [
        'uvicorn[standard]>=0.30; extra == "server"'
    ]
    assert "google-cloud-firestore>=2.16" in requires
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Framework :: FastAPI" in classifiers


def test_the_wheel_installs_and_runs_offline(built: Built, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    r = run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", built.wheel],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    # The dependencies come from this interpreter's site-packages, appended after
    # the new venv's own, so that nothing is downloaded. The checkout's keystore
    # does not come along: the dev install reaches it through .pth files there,
    # and a directory added by a path line has its .pth files left unread.
    r = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    site_packages = Path(r.stdout.strip())
    (site_packages / "dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )

    # From tmp_path, outside the checkout, so its keystore/ cannot be picked up.
    r = run([python, "-c", "import keystore; print(keystore.__file__)"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(site_packages), r.stdout
    r = run([venv / "bin" / "keystore", "--help"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for command in ("create", "list", "rotate", "revoke"):
        assert f"    {command} " in r.stdout, r.stdout
