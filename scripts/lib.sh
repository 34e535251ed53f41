# shellcheck shell=bash
# Shared helpers for scripts/quickstart, scripts/test and scripts/services.sh.
# Source it (it only defines functions and variables); do not execute it.

FLOWMILL_ROOT=$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$FLOWMILL_ROOT/.venv"
PYTHON="${PYTHON:-python3}"   # the interpreter that creates .venv; needs >= 3.11
FLOWMILL_LOG_DIR="${TMPDIR:-/tmp}"

say()  { printf '==> %s\n' "$*"; }
warn() { printf '!!  %s\n' "$*" >&2; }
die()  { printf 'error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
in_ci() { case "${CI:-}" in 1 | true | TRUE | True | yes) return 0 ;; *) return 1 ;; esac; }

# Run a command as root: directly when we are root, else through sudo (non-interactive when
# there is no terminal, as in CI), else explain and fail.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif have sudo; then
    if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
  else
    warn "root is needed for: $*  (run as root or install sudo)"
    return 1
  fi
}
can_be_root() { [ "$(id -u)" -eq 0 ] || have sudo; }

# Install Debian packages quietly; 'apt-get update' runs once per script run. The full
# output goes to a log file whose tail is shown on failure. LC_ALL=C.UTF-8: maintainer
# scripts inherit the locale (PostgreSQL's first cluster would be SQL_ASCII under POSIX).
_APT_UPDATED=
apt_install() {
  if ! have apt-get; then
    warn "apt-get not found: install these packages yourself: $*"
    return 1
  fi
  can_be_root || { warn "installing $* needs root (or sudo)"; return 1; }
  local log="$FLOWMILL_LOG_DIR/flowmill-apt.log"
  if [ -z "$_APT_UPDATED" ]; then
    say "apt-get update"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update >"$log" 2>&1; then
      tail -n 20 "$log" >&2
      warn "apt-get update failed (full log: $log)"
      return 1
    fi
    _APT_UPDATED=1
  fi
  say "apt-get install $*"
  if ! as_root env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 apt-get install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    warn "apt-get install $* failed (full log: $log)"
    return 1
  fi
}

# Wait up to SECONDS for COMMAND to succeed: wait_for SECONDS WHAT COMMAND...
wait_for() {
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds; i++)); do
    if "$@"; then return 0; fi
    sleep 1
  done
  warn "$what: not ready after ${seconds}s"
  return 1
}

# Is something listening on HOST PORT? (bash's /dev/tcp; no client needed)
port_open() { timeout 3 bash -c ": </dev/tcp/$1/$2" 2>/dev/null; }

_python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

_venv_ok() {
  [ -x "$VENV/bin/python" ] && _python_ok "$VENV/bin/python" &&
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

# Create .venv with $PYTHON (>= 3.11) unless a working one exists. On Debian, 'python3 -m venv'
# needs the python3-venv package (ensurepip): install it when we can become root.
ensure_venv() {
  if _venv_ok; then
    say "python: .venv ready ($("$VENV/bin/python" -V 2>&1))"
    return 0
  fi
  if ! have "$PYTHON"; then
    if [ "$PYTHON" = python3 ] && have apt-get && can_be_root; then
      apt_install python3 python3-venv || die "could not install python3"
    else
      die "$PYTHON not found: Flowmill needs Python >= 3.11"
    fi
  fi
  _python_ok "$PYTHON" || die "Flowmill needs Python >= 3.11, but $PYTHON is $("$PYTHON" -V 2>&1)"
  if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    say "python: '$PYTHON -m venv' cannot work here (no ensurepip: Debian's python3-venv is missing)"
    if have apt-get && can_be_root; then
      local pkgs=(python3-venv) pyver
      pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
      if apt-cache show "python$pyver-venv" >/dev/null 2>&1; then pkgs+=("python$pyver-venv"); fi
      apt_install "${pkgs[@]}" || die "could not install ${pkgs[*]}"
    else
      die "'$PYTHON -m venv' does not work: install Debian's python3-venv package (apt-get install python3-venv) as root, then run this again"
    fi
  fi
  if [ -e "$VENV" ]; then
    say "python: removing unusable .venv"
    rm -rf "$VENV"
  fi
  say "python: creating .venv with $("$PYTHON" -V 2>&1)"
  if ! "$PYTHON" -m venv "$VENV"; then
    rm -rf "$VENV"
    die "'$PYTHON -m venv .venv' failed"
  fi
}

# pip install -e '.[EXTRA]' into .venv; skipped when pyproject.toml, the checkout path and the
# interpreter are unchanged since the last successful install. Usage: install_project [EXTRA]
install_project() {
  local extra=${1:-} spec=. stamp key exe need=(flowmill)
  if [ -n "$extra" ]; then spec=".[$extra]"; fi
  if [ "$extra" = test ]; then need+=(pytest ruff); fi
  stamp="$VENV/.flowmill-installed${extra:+-$extra}"
  key="$(sha256sum <"$FLOWMILL_ROOT/pyproject.toml" | cut -d' ' -f1) $FLOWMILL_ROOT $("$VENV/bin/python" -V 2>&1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    local missing=
    for exe in "${need[@]}"; do [ -x "$VENV/bin/$exe" ] || missing=1; done
    if [ -z "$missing" ]; then
      say "pip: flowmill$([ -n "$extra" ] && printf '[%s]' "$extra") already installed (pyproject.toml unchanged)"
      return 0
    fi
  fi
  local log="$FLOWMILL_LOG_DIR/flowmill-pip.log"
  say "pip install -e '$spec' (into .venv; log: $log)"
  rm -f "$stamp"
  if ! (cd "$FLOWMILL_ROOT" &&
    "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$spec") >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "pip install -e '$spec' failed (full log: $log)"
  fi
  printf '%s\n' "$key" >"$stamp"
}
