"""emulator.sh: what it says when the emulator, Java or Node is missing, and its
lifecycle."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from keystore import key_pattern
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "emulator.sh"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_emulator_says_how_to_install(tmp_path: Path) -> None:
    done = run(
        "start",
        KEYSTORE_EMULATOR_DIR=str(tmp_path),
        KEYSTORE_EMULATOR_BIN=str(tmp_path / "absent"),
    )
    assert done.returncode == 1
    assert "gcloud components install cloud-firestore-emulator" in done.stderr
    assert "google-cloud-cli-firestore-emulator" in done.stderr


def test_missing_java_says_so(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "python3"):  # everything but java
        (bin_dir / tool).symlink_to(
            subprocess.check_output(["which", tool], text=True).strip()
        )
    done = run("start", KEYSTORE_EMULATOR_DIR=str(tmp_path), PATH=str(bin_dir))
    assert done.returncode == 1
    assert "Java is missing" in done.stderr


def test_missing_node_says_so(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "python3"):  # everything but node and npm
        (bin_dir / tool).symlink_to(
            subprocess.check_output(["which", tool], text=True).strip()
        )
    done = run("auth-start", KEYSTORE_EMULATOR_DIR=str(tmp_path), PATH=str(bin_dir))
    assert done.returncode == 1
    assert "Node.js 20 or newer and npm are missing" in done.stderr


def test_start_status_stop(tmp_path: Path) -> None:
    env = {"KEYSTORE_EMULATOR_DIR": str(tmp_path)}
    started = run("start", **env)
    try:
        assert started.returncode == 0, started.stderr
        host = started.stdout.strip().removeprefix("export FIRESTORE_EMULATOR_HOST=")
        assert httpx.get(f"http://{host}/").text.strip() == "Ok"
        assert run("status", **env).stdout.startswith(f"running on {host}")
    finally:
        assert run("stop", **env).returncode == 0
    status = run("status", **env)
    assert (status.returncode, status.stdout) == (1, "not running\n")
    assert not (tmp_path / "pid").exists()


def test_serve_https_runs_the_demo_end_to_end(tmp_path: Path) -> None:
    """The README's serve command: emulator, demo key printed once, API over TLS."""
    port = free_port()
    env = {**os.environ, "KEYSTORE_EMULATOR_DIR": str(tmp_path), "PORT": str(port)}
    env.pop("FIRESTORE_EMULATOR_HOST", None)
    process = subprocess.Popen(
        [str(ROOT / "emulator.sh"), "serve", "--https"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        # The lines to paste in a second terminal come before the server.
        while not any(line.startswith("  export ") for line in seen):
            line = process.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
        base = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                httpx.get(f"{base}/healthz", verify=False, timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        # Pasted as a new user would, with nothing else of ours set: the
        # command sees the same emulator and project, and the demo key.
        pasted = next(line for line in seen if line.startswith("  export "))
        names = dict(pair.split("=", 1) for pair in pasted.split()[1:])
        clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTORE_")}
        clean.pop("GOOGLE_CLOUD_PROJECT", None)
        listed = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "keystore"), "list", "--json"],
            env={**clean, **names},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert [row["name"] for row in json.loads(listed.stdout)] == ["demo"]
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        output = "".join(seen) + process.communicate(timeout=60)[0]
    keys = re.findall(key_pattern("ks"), output)
    assert len(keys) == 1  # printed once
    assert "Firestore emulator stopped" in output
    assert (tmp_path / "cert.pem").exists() and not (tmp_path / "pid").exists()
