#!/usr/bin/env bash
# The Firestore emulator for keystore: find it, start it on a free port, wait until it
# answers, stop it; the Firebase Auth emulator likewise; and the project's two
# commands, `serve` and `test`.
#
#   ./emulator.sh serve [--https]   virtualenv, install, emulators, demo key, API on :8000
#   ./emulator.sh test [PYTEST ARGS] virtualenv, install, the whole test suite
#   ./emulator.sh lint              ruff and mypy, as CI runs them
#   ./emulator.sh start | stop | status       the Firestore emulator
#   ./emulator.sh auth-start | auth-stop      the Firebase Auth emulator
#
# Environment: KEYSTORE_EMULATOR_DIR (state: pid, port, log; default .emulator),
# KEYSTORE_EMULATOR_PORT (default: a free port), KEYSTORE_EMULATOR_TIMEOUT (seconds
# to wait for readiness, default 60), KEYSTORE_EMULATOR_BIN (the emulator's launcher,
# default: found under the Google Cloud SDK), KEYSTORE_EMULATOR_IMPORT (an export's
# .overall_export_metadata file to load at start), PORT (the API's port, 8000).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE_DIR=${KEYSTORE_EMULATOR_DIR:-$ROOT/.emulator}
VENV=${KEYSTORE_VENV:-$ROOT/.venv}
HOST=127.0.0.1
INSTALL_HINT="Install it with 'gcloud components install cloud-firestore-emulator', or on Debian/Ubuntu 'apt-get install google-cloud-cli-firestore-emulator' (Google Cloud apt repository)."

say() { printf 'emulator.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

find_emulator() {
  local root candidate
  if [ -n "${KEYSTORE_EMULATOR_BIN:-}" ]; then
    [ -x "$KEYSTORE_EMULATOR_BIN" ] && { echo "$KEYSTORE_EMULATOR_BIN"; return; }
    die "KEYSTORE_EMULATOR_BIN=$KEYSTORE_EMULATOR_BIN is not an executable file. $INSTALL_HINT"
  fi
  command -v java >/dev/null 2>&1 || die "Java is missing; the Firestore emulator needs it. Install a JRE 11 or newer (Debian: apt-get install default-jre-headless)."
  for root in "${CLOUDSDK_ROOT_DIR:-}" /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk \
      /opt/google-cloud-sdk "$HOME/google-cloud-sdk"; do
    candidate=$root/platform/cloud-firestore-emulator/cloud_firestore_emulator
    [ -n "$root" ] && [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
  if command -v gcloud >/dev/null 2>&1; then
    root=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)
    candidate=$root/platform/cloud-firestore-emulator/cloud_firestore_emulator
    [ -n "$root" ] && [ -x "$candidate" ] && { echo "$candidate"; return; }
  fi
  die "The Cloud Firestore emulator is not installed. $INSTALL_HINT"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# running DIR: the process whose pid DIR holds is alive.
running() {
  [ -f "$1/pid" ] && kill -0 "$(cat "$1/pid")" 2>/dev/null
}

is_running() { running "$STATE_DIR"; }

# await_ready DIR URL MARK NAME STOP: wait until URL answers with MARK; if the
# process of DIR exits first or the timeout passes, say why (STOP cleans up).
await_ready() {
  local dir=$1 url=$2 mark=$3 name=$4 stop=$5 deadline
  deadline=$((SECONDS + ${KEYSTORE_EMULATOR_TIMEOUT:-60}))
  until curl -sf "$url" 2>/dev/null | grep -q "$mark"; do
    if ! running "$dir"; then
      tail -n 20 "$dir/log" >&2 || true
      rm -f "$dir/pid"
      die "the $name exited before it was ready (log above, in full at $dir/log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      "$stop"
      die "the $name was not ready within ${KEYSTORE_EMULATOR_TIMEOUT:-60}s (log: $dir/log)"
    fi
    sleep 0.2
  done
}

# stop_group DIR NAME: end the process group whose leader's pid DIR holds
# (setsid started it), gently, then for good.
stop_group() {
  local dir=$1 pid
  if ! running "$dir"; then rm -f "$dir/pid"; return; fi
  pid=$(cat "$dir/pid")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$dir/pid"
  say "$2 stopped"
}

cmd_start() {
  local emulator port
  if is_running; then
    say "already running on $HOST:$(cat "$STATE_DIR/port")"
    echo "export FIRESTORE_EMULATOR_HOST=$HOST:$(cat "$STATE_DIR/port")"
    return
  fi
  emulator=$(find_emulator)
  port=${KEYSTORE_EMULATOR_PORT:-$(free_port)}
  mkdir -p "$STATE_DIR"
  # setsid: the emulator (a shell script and its java child) gets its own process
  # group, so that stop can end both and nothing is orphaned.
  local import=()
  [ -n "${KEYSTORE_EMULATOR_IMPORT:-}" ] && import=(--import-data="$KEYSTORE_EMULATOR_IMPORT")
  setsid "$emulator" start --host="$HOST" --port="$port" --rules="$ROOT/firestore.rules" \
    "${import[@]}" >"$STATE_DIR/log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/pid"
  echo "$port" >"$STATE_DIR/port"
  await_ready "$STATE_DIR" "http://$HOST:$port/" Ok emulator cmd_stop
  say "Firestore emulator ready on $HOST:$port, rules from firestore.rules"
  echo "export FIRESTORE_EMULATOR_HOST=$HOST:$port"
}

cmd_stop() { stop_group "$STATE_DIR" "Firestore emulator"; }

# -- the Firebase Auth emulator (firebase-tools, from npm, into tools/) -------------

TOOLS=$ROOT/tools
FIREBASE=$TOOLS/node_modules/.bin/firebase
AUTH_DIR=$STATE_DIR/auth

ensure_firebase_tools() {
  local stamp=$TOOLS/node_modules/.keystore-installed
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
    die "Node.js 20 or newer and npm are missing; the Firebase Auth emulator (firebase-tools) needs them. Install them (Debian: apt-get install nodejs npm; or https://nodejs.org)."
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' ||
    die "Node.js $(node --version) is too old; firebase-tools needs 20 or newer."
  [ -x "$FIREBASE" ] && [ -f "$stamp" ] && [ ! "$TOOLS/package-lock.json" -nt "$stamp" ] && return
  say "installing firebase-tools into $TOOLS/node_modules (once)"
  # The lock file pins every package; no install scripts are needed to run the
  # Auth emulator, which is plain JavaScript.
  npm ci --prefix "$TOOLS" --no-audit --no-fund --ignore-scripts --loglevel=error >&2 ||
    die "npm could not install firebase-tools (output above)."
  touch "$stamp"
}

cmd_auth_start() {
  local port hub logs project=${GOOGLE_CLOUD_PROJECT:-demo-keystore}
  if running "$AUTH_DIR"; then
    echo "export FIREBASE_AUTH_EMULATOR_HOST=$HOST:$(cat "$AUTH_DIR/port")"
    return
  fi
  ensure_firebase_tools
  port=${KEYSTORE_AUTH_EMULATOR_PORT:-$(free_port)}
  hub=$(free_port)
  logs=$(free_port)
  mkdir -p "$AUTH_DIR"
  # Every port of its own, so that several runs (a server, a test suite) can
  # share a machine; no UI.
  cat >"$AUTH_DIR/firebase.json" <<JSON
{"emulators": {"auth": {"host": "$HOST", "port": $port},
  "hub": {"host": "$HOST", "port": $hub}, "logging": {"host": "$HOST", "port": $logs},
  "ui": {"enabled": false}, "singleProjectMode": true}}
JSON
  # setsid, as for the Firestore emulator: stop ends its process group. Run
  # from the state directory, where it writes its debug log.
  cd "$AUTH_DIR"
  CI=true setsid "$FIREBASE" emulators:start --only auth --project "$project" \
    --config "$AUTH_DIR/firebase.json" --non-interactive >"$AUTH_DIR/log" 2>&1 </dev/null &
  echo $! >"$AUTH_DIR/pid"
  cd "$ROOT"
  echo "$port" >"$AUTH_DIR/port"
  await_ready "$AUTH_DIR" "http://$HOST:$port/" authEmulator "Auth emulator" cmd_auth_stop
  say "Firebase Auth emulator ready on $HOST:$port, project $project"
  echo "export FIREBASE_AUTH_EMULATOR_HOST=$HOST:$port"
}

cmd_auth_stop() { stop_group "$AUTH_DIR" "Firebase Auth emulator"; }

cmd_status() {
  if is_running; then
    echo "running on $HOST:$(cat "$STATE_DIR/port") (pid $(cat "$STATE_DIR/pid"))"
  else
    echo "not running"; return 1
  fi
}

ensure_venv() {
  local stamp=$VENV/.keystore-installed
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
      die "keystore needs Python 3.11 or newer as python3."
    say "creating a virtualenv in $VENV"
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    say "installing keystore and its test tools into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
    # The package holds keystore only; the demo app (api/) and benchmarks/ run from
    # the checkout, which this puts on the venv's path from any directory.
    "$VENV/bin/python" -c 'import sys, sysconfig
with open(sysconfig.get_paths()["purelib"] + "/keystore-checkout.pth", "w") as f:
    f.write(sys.argv[1] + "\n")' "$ROOT"
    touch "$stamp"
  fi
}

cmd_serve() {
  local https=0 port=${PORT:-8000} scheme=http tls=()
  [ "${1:-}" = "--https" ] && https=1
  ensure_venv
  trap 'cmd_auth_stop; cmd_stop' EXIT
  trap 'exit 130' INT TERM
  export GOOGLE_CLOUD_PROJECT=${GOOGLE_CLOUD_PROJECT:-demo-keystore}
  eval "$(cmd_start)"
  eval "$(cmd_auth_start)"
  export FIRESTORE_EMULATOR_HOST FIREBASE_AUTH_EMULATOR_HOST
  if [ "$https" = 1 ]; then
    tls=(--ssl-keyfile "$STATE_DIR/key.pem" --ssl-certfile "$STATE_DIR/cert.pem")
    [ -f "$STATE_DIR/cert.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -days 365 \
      -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
      -keyout "$STATE_DIR/key.pem" -out "$STATE_DIR/cert.pem" 2>/dev/null
    scheme=https
  fi
  echo
  echo "A demo key with the scope reports:read (shown this once):"
  # A just-started emulator can take seconds over its first write.
  KEYSTORE_TIMEOUT=${KEYSTORE_TIMEOUT:-15} "$VENV/bin/keystore" create --name demo --scope reports:read
  echo
  echo "Try:  curl ${tls:+-k }-H 'x-api-key: <the key above>' $scheme://127.0.0.1:$port/v1/whoami"
  echo "Docs: $scheme://127.0.0.1:$port/docs    Ctrl-C stops the server and the emulators."
  echo
  echo "Customers manage their own keys at $scheme://127.0.0.1:$port/v1/me/ (sign up there),"
  echo "or with curl: sign up a test customer with the Auth emulator, then list its keys:"
  echo "  TOKEN=\$(curl -s 'http://$FIREBASE_AUTH_EMULATOR_HOST/identitytoolkit.googleapis.com/v1/accounts:signUp?key=any' \\"
  echo "    -H 'content-type: application/json' -d '{\"email\":\"ann@example.com\",\"password\":\"secret-password\",\"returnSecureToken\":true}' \\"
  echo "    | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"idToken\"])')"
  echo "  curl ${tls:+-k }-X POST -H \"Authorization: Bearer \$TOKEN\" -H 'content-type: application/json' -d '{\"name\":\"laptop\"}' $scheme://127.0.0.1:$port/v1/me/keys"
  echo "  curl ${tls:+-k }-H \"Authorization: Bearer \$TOKEN\" $scheme://127.0.0.1:$port/v1/me/keys"
  echo
  echo "To use the keystore command on this emulator and project, paste in a second terminal:"
  echo "  export FIRESTORE_EMULATOR_HOST=$FIRESTORE_EMULATOR_HOST GOOGLE_CLOUD_PROJECT=$GOOGLE_CLOUD_PROJECT"
  echo "  source $VENV/bin/activate && keystore list"
  echo
  "$VENV/bin/uvicorn" api.main:app --host 127.0.0.1 --port "$port" "${tls[@]}"
}

# The customers' page test drives Debian's headless Chromium: installed here
# if it is missing and this user may (CI runs as root); the test says if not.
ensure_chromium() {
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's chromium and chromium-driver (for the page test)"
    { apt-get install -y -q --no-install-recommends chromium chromium-driver ||
      { apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver; }
    } >/dev/null || say "could not install chromium; the page test will say so"
  fi
}

cmd_test() {
  ensure_venv
  ensure_firebase_tools
  ensure_chromium
  # The suite starts and stops its own emulator through this script (tests/conftest.py).
  cd "$ROOT"
  local status=0
  "$VENV/bin/coverage" run -m pytest "$@" || status=$?
  # pytest's 5 means no test ran: a failure here, never a pass.
  [ "$status" -eq 5 ] && say "no test ran"
  [ "$status" -eq 0 ] || return "$status"
  [ $# -gt 0 ] || "$VENV/bin/coverage" report --fail-under="${KEYSTORE_COVERAGE_MIN:-95}"
}

cmd_lint() {
  ensure_venv
  cd "$ROOT"
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/ruff" check .
  "$VENV/bin/mypy"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  auth-start) cmd_auth_start ;;
  auth-stop) cmd_auth_stop ;;
  serve) shift; cmd_serve "$@" ;;
  test) shift; cmd_test "$@" ;;
  lint) cmd_lint ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
