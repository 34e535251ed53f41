# shellcheck shell=bash
# Services the test suite talks to, made reachable on a Debian (bookworm) machine.
#
# Sourced by scripts/test; can also be run on its own:
#   bash scripts/services.sh               # ensure every service below
#   bash scripts/services.sh postgresql    # ensure only the ones named
#
# Every service has one function `ensure_<name>` and is listed in FLOWMILL_TEST_SERVICES.
# Each function follows the same rules:
#   1. If the service already answers the way the tests use it, do nothing at all.
#   2. Otherwise install the Debian packages that are missing, start the server without
#      systemd (none on these machines), configure the access the tests use, create what
#      the tests expect, and wait (bounded) until it answers.
#   3. Access/authentication is changed only on a server that this run installed or
#      started, or when CI=true; a server that was already running but refuses the tests'
#      login is left alone on a developer machine (the function says what to do instead).
#   4. Return non-zero with a message when the service is still not usable; the caller
#      decides (scripts/test stops when CI=true, else warns: the tests then skip).
#
# To add a service (Redis, RabbitMQ, Mosquitto, Chromium, litmus, ...): append its name to
# FLOWMILL_TEST_SERVICES and write ensure_<name> below, following the rules above.
FLOWMILL_TEST_SERVICES=(
  postgresql # 127.0.0.1:5432, user postgres, trust auth for local TCP, database test
  mariadb    # 127.0.0.1:3306, user root with an empty password, database test
  redis      # 127.0.0.1:6379, no password (Celery broker tests use database 15)
  chromium   # /usr/bin/chromium, driven headless by Playwright in tests/e2e
  litmus     # Debian's WebDAV test suite, run against our WebDAV server in tests/servers
  poppler    # pdftotext/pdftoppm read back the PDFs of tests/nodes/test_pdf.py
  dovecot    # /usr/sbin/dovecot: tests/nodes/test_imap.py starts its own on a loopback port
  mosquitto  # 127.0.0.1:1883, anonymous; tests/nodes/test_mqtt.py also starts its own (TLS)
  curl       # the real HTTP/FTPS client of tests/servers (not on a minimal Debian)
)

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Ensure the services named (default: all of FLOWMILL_TEST_SERVICES). Returns non-zero when
# any of them is not usable.
ensure_services() {
  local names=("$@") name failed=()
  if [ ${#names[@]} -eq 0 ]; then names=("${FLOWMILL_TEST_SERVICES[@]}"); fi
  for name in "${names[@]}"; do
    if ! declare -F "ensure_$name" >/dev/null; then
      warn "unknown service '$name' (known: ${FLOWMILL_TEST_SERVICES[*]})"
      failed+=("$name")
    elif ! "ensure_$name"; then
      failed+=("$name")
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    warn "not available: ${failed[*]}"
    return 1
  fi
}

# May we change the access configuration of this server? (rule 3 above)
# Usage: _may_configure NAME STARTED_BY_US
_may_configure() {
  if [ "$2" = 1 ] || in_ci; then return 0; fi
  warn "$1: it was already running and refuses the tests' login; a server this script did"
  warn "$1: not start is not reconfigured (CI=true allows it; see docs/operations.md)"
  return 1
}

# --- PostgreSQL --------------------------------------------------------------------------

FLOWMILL_PG_HBA_MARK="# flowmill tests: trust local TCP (scripts/services.sh)"

_pg_try() { # _pg_try DATABASE: can the tests' user log in over TCP without a password?
  have psql || return 1
  PGCONNECT_TIMEOUT=3 psql -X -w -q -At -h 127.0.0.1 -p 5432 -U postgres -d "$1" \
    -c 'SELECT 1' >/dev/null 2>&1
}

# "VERSION CLUSTER STATUS" of the Debian cluster configured for port 5432, if any.
_pg_cluster_5432() {
  have pg_lsclusters || return 1
  pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2, $4; found = 1; exit } END { exit !found }'
}

ensure_postgresql() {
  if [ -n "${FLOWMILL_TEST_PG:-}" ]; then
    say "postgresql: FLOWMILL_TEST_PG is set, the tests use it; nothing to do"
    return 0
  fi
  if _pg_try test; then
    say "postgresql: ready (127.0.0.1:5432, database test)"
    return 0
  fi
  say "postgresql: not usable yet; setting it up"
  local started=0 ver cluster newest hba
  if ! have pg_lsclusters || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    apt_install postgresql postgresql-client || return 1
    started=1 # a server we install is ours to configure
  fi
  have psql || apt_install postgresql-client || return 1

  if ! read -r ver cluster _ < <(_pg_cluster_5432); then
    if [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
      warn "postgresql: clusters exist but none on port 5432:"
      pg_lsclusters >&2
      return 1
    fi
    newest=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    say "postgresql: creating cluster $newest/main"
    as_root pg_createcluster --locale C.UTF-8 "$newest" main >/dev/null || return 1
    read -r ver cluster _ < <(_pg_cluster_5432) || {
      warn "postgresql: the new cluster did not get port 5432"
      return 1
    }
  fi
  if ! port_open 127.0.0.1 5432; then
    say "postgresql: starting cluster $ver/$cluster"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$cluster" start || return 1
    started=1
    wait_for 30 "postgresql on 127.0.0.1:5432" port_open 127.0.0.1 5432 || return 1
  fi

  if ! _pg_try postgres; then
    _may_configure postgresql "$started" || return 1
    hba=/etc/postgresql/$ver/$cluster/pg_hba.conf
    if as_root grep -qxF "$FLOWMILL_PG_HBA_MARK" "$hba"; then
      warn "postgresql: $hba already trusts local TCP, yet login as postgres fails"
      return 1
    fi
    say "postgresql: trusting TCP from 127.0.0.1 and ::1 in $hba; reloading"
    # pg_hba.conf is first-match: put the lines first. Rewrite in place (keeps owner/mode).
    # shellcheck disable=SC2016 # $1/$2 are expanded by the inner sh
    as_root sh -c 'f=$1; t=$(mktemp) && { printf "%s\n%s\n%s\n\n" "$2" \
        "host all all 127.0.0.1/32 trust" "host all all ::1/128 trust"; cat "$f"; } >"$t" &&
        cat "$t" >"$f" && rm -f "$t"' sh "$hba" "$FLOWMILL_PG_HBA_MARK" || return 1
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$cluster" reload || return 1
    wait_for 15 "postgresql login as postgres over TCP" _pg_try postgres || return 1
  fi

  if ! _pg_try test; then
    say "postgresql: creating database test"
    PGCONNECT_TIMEOUT=3 psql -X -w -q -h 127.0.0.1 -p 5432 -U postgres -d postgres \
      -c 'CREATE DATABASE test' || return 1
  fi
  wait_for 15 "postgresql database test" _pg_try test || return 1
  say "postgresql: ready (127.0.0.1:5432, database test)"
}

# --- MariaDB -----------------------------------------------------------------------------

_my_client() {
  if have mariadb; then echo mariadb; elif have mysql; then echo mysql; else return 1; fi
}

_my_try() { # _my_try [DATABASE]: can root log in over TCP with an empty password?
  local client
  client=$(_my_client) || return 1
  "$client" --no-defaults --protocol=TCP -h 127.0.0.1 -P 3306 -u root --connect-timeout=3 \
    -e 'SELECT 1' ${1:+"$1"} >/dev/null 2>&1
}

_my_socket_try() { # root over the unix socket (unix_socket auth: needs OS root)
  as_root "$(_my_client)" --protocol=socket -u root -e 'SELECT 1' >/dev/null 2>&1
}

ensure_mariadb() {
  if [ -n "${FLOWMILL_TEST_MARIADB:-}" ]; then
    say "mariadb: FLOWMILL_TEST_MARIADB is set, the tests use it; nothing to do"
    return 0
  fi
  if _my_try test; then
    say "mariadb: ready (127.0.0.1:3306, root, database test)"
    return 0
  fi
  say "mariadb: not usable yet; setting it up"
  local started=0 client
  if [ ! -x /usr/sbin/mariadbd ]; then
    apt_install mariadb-server mariadb-client || return 1
    started=1 # a server we install is ours to configure
  fi
  _my_client >/dev/null || apt_install mariadb-client || return 1
  client=$(_my_client)

  if ! port_open 127.0.0.1 3306; then
    if ! as_root test -d /var/lib/mysql/mysql; then
      say "mariadb: initialising /var/lib/mysql"
      as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null || return 1
    fi
    as_root install -d -m 0755 -o mysql -g root /run/mysqld || return 1
    say "mariadb: starting mariadbd"
    # Debian's config does not set user=mysql (systemd does): pass it, or mariadbd refuses
    # to run as root. start-stop-daemon --oknodo does nothing if mariadbd already runs.
    local args=(--user=mysql)
    if [ -d /var/log/mysql ]; then args+=(--log-error=/var/log/mysql/error.log); fi
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
      -- "${args[@]}" || return 1
    started=1
    if ! wait_for 60 "mariadb on 127.0.0.1:3306" port_open 127.0.0.1 3306; then
      if [ -r /var/log/mysql/error.log ]; then tail -n 20 /var/log/mysql/error.log >&2; fi
      return 1
    fi
  fi

  if ! _my_try; then
    _may_configure mariadb "$started" || return 1
    say "mariadb: letting root log in over TCP with an empty password (mysql_native_password)"
    # Debian's root@localhost is unix_socket-only: keep the socket login, add an empty native
    # password, and add root@127.0.0.1 and root@::1 (used when names are not resolved).
    wait_for 30 "mariadb login as root over its socket" _my_socket_try || return 1
    as_root "$client" --protocol=socket -u root <<'SQL' || return 1
ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
ALTER USER 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'root'@'::1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
ALTER USER 'root'@'::1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'::1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
    wait_for 15 "mariadb login as root over TCP" _my_try || return 1
  fi

  if ! _my_try test; then
    say "mariadb: creating database test"
    "$client" --no-defaults --protocol=TCP -h 127.0.0.1 -P 3306 -u root \
      -e 'CREATE DATABASE IF NOT EXISTS test CHARACTER SET utf8mb4' || return 1
  fi
  wait_for 15 "mariadb database test" _my_try test || return 1
  say "mariadb: ready (127.0.0.1:3306, root, database test)"
}

# --- Redis -------------------------------------------------------------------------------

_redis_try() { # does 127.0.0.1:6379 answer PING? (redis-cli if present, else bash's /dev/tcp)
  local line=
  if have redis-cli; then
    line=$(timeout 3 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)
    [ "$line" = PONG ]
  else
    { printf 'PING\r\n' >&3 && IFS= read -r -t 3 line <&3; } 2>/dev/null 3<>/dev/tcp/127.0.0.1/6379 ||
      return 1
    [ "${line%$'\r'}" = "+PONG" ]
  fi
}

ensure_redis() {
  if _redis_try; then
    say "redis: ready (127.0.0.1:6379)"
    return 0
  fi
  say "redis: not usable yet; setting it up"
  if port_open 127.0.0.1 6379; then
    warn "redis: something listens on 127.0.0.1:6379 but does not answer PING (a password?);"
    warn "redis: it is left alone: stop it, or point FLOWMILL_TEST_REDIS at a usable Redis"
    return 1
  fi
  if ! have redis-server; then
    apt_install redis-server || return 1
  fi
  # no systemd here: run it ourselves, in memory only (tests need no persistence)
  say "redis: starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    >/dev/null || return 1
  wait_for 15 "redis on 127.0.0.1:6379" _redis_try || return 1
  say "redis: ready (127.0.0.1:6379)"
}

# --- Chromium (browser end-to-end tests) ------------------------------------------------

_chromium_try() {
  [ -x /usr/bin/chromium ] && /usr/bin/chromium --headless --no-sandbox --disable-gpu \
    --disable-background-networking --disable-component-update --disable-sync --no-first-run \
    --version >/dev/null 2>&1
}

ensure_chromium() {
  if _chromium_try; then
    say "chromium: ready (/usr/bin/chromium)"
    return 0
  fi
  say "chromium: not installed yet; installing Debian's package"
  apt_install chromium || return 1
  if ! _chromium_try; then
    warn "chromium: /usr/bin/chromium does not start"
    return 1
  fi
  say "chromium: ready (/usr/bin/chromium)"
}

# --- litmus (WebDAV compliance suite, tests/servers/test_webdav.py) ----------------------

# Debian installs the runner as /usr/bin/litmus and the suites under /usr/libexec/litmus.
_litmus_try() { have litmus && [ -x /usr/libexec/litmus/basic ]; }

ensure_litmus() {
  if _litmus_try; then
    say "litmus: ready ($(command -v litmus))"
    return 0
  fi
  say "litmus: not installed yet; installing Debian's package"
  apt_install litmus || return 1
  if ! _litmus_try; then
    warn "litmus: installed, yet 'litmus' or /usr/libexec/litmus/basic is missing"
    return 1
  fi
  say "litmus: ready ($(command -v litmus))"
}

# --- poppler (reads back rendered PDFs, tests/nodes/test_pdf.py) -----------------------

_poppler_try() { have pdftotext && have pdftoppm; }

ensure_poppler() {
  if _poppler_try; then
    say "poppler: ready ($(command -v pdftotext))"
    return 0
  fi
  say "poppler: not installed yet; installing Debian's package"
  apt_install poppler-utils || return 1
  if ! _poppler_try; then
    warn "poppler: installed, yet pdftotext or pdftoppm is missing"
    return 1
  fi
  say "poppler: ready ($(command -v pdftotext))"
}

# --- Dovecot (IMAP server for tests/nodes/test_imap.py) ---------------------------------

# The tests start their own `dovecot -F -c TMP/dovecot.conf` on free loopback ports; only the
# binary is needed. The system service is neither started nor used.
_dovecot_try() { [ -x /usr/sbin/dovecot ] && [ -x /usr/lib/dovecot/imap ]; }

ensure_dovecot() {
  if _dovecot_try; then
    say "dovecot: ready (/usr/sbin/dovecot; the tests start their own server)"
    return 0
  fi
  say "dovecot: not installed yet; installing Debian's package (its service is not started)"
  # the package would start the system-wide service: a policy-rc.d saying "no" (101) stops
  # that; one the machine already has is kept as it is
  local guard= rc=0
  if ! as_root test -e /usr/sbin/policy-rc.d; then
    guard=/usr/sbin/policy-rc.d
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" >"$1" && chmod 0755 "$1"' sh "$guard" ||
      return 1
  fi
  apt_install dovecot-imapd || rc=1
  if [ -n "$guard" ]; then as_root rm -f "$guard"; fi
  [ "$rc" = 0 ] || return 1
  if ! _dovecot_try; then
    warn "dovecot: installed, yet /usr/sbin/dovecot or /usr/lib/dovecot/imap is missing"
    return 1
  fi
  say "dovecot: ready (/usr/sbin/dovecot; the tests start their own server)"
}

# --- Mosquitto (MQTT broker for tests/nodes/test_mqtt.py) -------------------------------

FLOWMILL_MQTT_CONF=/etc/mosquitto/conf.d/flowmill-tests.conf

_mosquitto_bins() { [ -x /usr/sbin/mosquitto ] && [ -x /usr/bin/mosquitto_passwd ]; }

_mosquitto_try() { # does 127.0.0.1:1883 accept an anonymous MQTT 3.1.1 login (CONNACK 0)?
  local reply
  # shellcheck disable=SC2016 # expanded by the inner bash
  reply=$(timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/1883 &&
    printf "\x10\x14\x00\x04MQTT\x04\x02\x00\x0a\x00\x08fm-check" >&3 &&
    head -c 4 <&3 | od -An -tx1' 2>/dev/null) || return 1
  # shellcheck disable=SC2086 # word splitting trims od's spacing
  [ "$(echo $reply)" = "20 02 00 00" ]
}

_mosquitto_start() {
  # Debian's config writes its pid and log below these; without systemd nobody makes them
  as_root install -d -m 0755 -o mosquitto -g mosquitto /run/mosquitto /var/log/mosquitto \
    /var/lib/mosquitto || return 1
  say "mosquitto: starting mosquitto -d -c /etc/mosquitto/mosquitto.conf"
  as_root /usr/sbin/mosquitto -d -c /etc/mosquitto/mosquitto.conf || return 1
  wait_for 15 "mosquitto on 127.0.0.1:1883" port_open 127.0.0.1 1883
}

ensure_mosquitto() {
  if _mosquitto_bins && _mosquitto_try; then
    say "mosquitto: ready (127.0.0.1:1883, anonymous)"
    return 0
  fi
  say "mosquitto: not usable yet; setting it up"
  local started=0
  if ! _mosquitto_bins; then
    apt_install mosquitto || return 1
    started=1 # a broker we install is ours to configure
  fi
  if ! port_open 127.0.0.1 1883; then
    _mosquitto_start || return 1
    started=1
  fi
  if ! _mosquitto_try; then
    _may_configure mosquitto "$started" || return 1
    if as_root test -e "$FLOWMILL_MQTT_CONF" ||
      ! as_root grep -qE '^[[:space:]]*include_dir[[:space:]]+/etc/mosquitto/conf.d' \
        /etc/mosquitto/mosquitto.conf ||
      as_root grep -qE '^[[:space:]]*(listener|allow_anonymous)' /etc/mosquitto/mosquitto.conf; then
      warn "mosquitto: 127.0.0.1:1883 refuses an anonymous login and its configuration"
      warn "mosquitto: sets listeners itself; allow anonymous access on 127.0.0.1:1883 by hand"
      return 1
    fi
    # Mosquitto 2 without a listener line allows anonymous access from localhost only;
    # a listener of our own needs allow_anonymous spelled out
    say "mosquitto: allowing anonymous access on 127.0.0.1:1883 ($FLOWMILL_MQTT_CONF)"
    as_root sh -c 'printf "%s\n" "# flowmill tests (scripts/services.sh)" \
        "listener 1883 127.0.0.1" "allow_anonymous true" >"$1"' sh "$FLOWMILL_MQTT_CONF" ||
      return 1
    if as_root test -s /run/mosquitto/mosquitto.pid; then
      as_root sh -c 'kill "$(cat /run/mosquitto/mosquitto.pid)"' || return 1
      sleep 1
    fi
    _mosquitto_start || return 1
  fi
  wait_for 15 "mosquitto anonymous login on 127.0.0.1:1883" _mosquitto_try || return 1
  say "mosquitto: ready (127.0.0.1:1883, anonymous)"
}

# --- curl (a real client for the FTPS and WebDAV servers, tests/servers) -----------------

_curl_try() { have curl && curl --version >/dev/null 2>&1; }

ensure_curl() {
  if _curl_try; then
    say "curl: ready ($(command -v curl))"
    return 0
  fi
  say "curl: not installed yet; installing Debian's package"
  apt_install curl || return 1
  if ! _curl_try; then
    warn "curl: installed, yet 'curl --version' fails"
    return 1
  fi
  say "curl: ready ($(command -v curl))"
}

# Run directly: ensure the services named on the command line (default: all).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  ensure_services "$@"
fi
