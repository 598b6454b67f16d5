#!/usr/bin/env bash
# Installs (when missing) and starts the real services beam_etl's integration tests talk to, on
# loopback only. Idempotent: `up` on a healthy service does nothing. Every wait is bounded.
# State lives in $BEAM_ETL_SERVICES_DIR (default ~/.cache/beam_etl/services); pid files and logs
# in its run/ folder. See docs/services.md.
#
#   scripts/services.sh up     [SERVICE...]   install if needed, start, wait for a real login
#   scripts/services.sh down   [SERVICE...]   stop (data is kept; moto's S3 is in memory)
#   scripts/services.sh status [SERVICE...]   one line each: running|unhealthy|stopped + endpoint
#   scripts/services.sh env                   `export ...` lines with the connection settings
#   scripts/services.sh kafka-topic NAME [PARTITIONS]   create a Kafka topic (default 1 partition,
#                                             replication 1) unless it exists; more partitions are
#                                             added to a smaller one; uses confluent_kafka's AdminClient
#
# SERVICE: postgres | mariadb (alias mysql) | ferretdb (alias mongo, mongodb) | s3 (alias moto) |
# kafka | prometheus (alias prom). No SERVICE means all six. Exit codes: 0 ok; 1 a service failed (it
# is named, with its log tail); 2 bad usage; 3 `status`: a service is not running.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/services.sh"
SERVICES_DIR="${BEAM_ETL_SERVICES_DIR:-$HOME/.cache/beam_etl/services}"
RUN_DIR="$SERVICES_DIR/run"
BIN_DIR="$SERVICES_DIR/bin"
PYTHON="${PYTHON:-python3}"
WAIT_S="${BEAM_ETL_SERVICES_WAIT_S:-60}"
ALL_SERVICES=(postgres mariadb ferretdb s3 kafka prometheus)

# Connection settings. Other code reads the same variables (tests/services.py, `env` below);
# these defaults are fixed, so change them only through the environment, and consistently.
HOST=127.0.0.1
PG_PORT="${BEAM_ETL_PG_PORT:-55432}"
PG_USER="${BEAM_ETL_PG_USER:-beam_etl}"
PG_PASSWORD="${BEAM_ETL_PG_PASSWORD:-beam_etl_test_pw}"
PG_DB="${BEAM_ETL_PG_DB:-beam_etl_test}"
PG_STATE_DB="${BEAM_ETL_PG_STATE_DB:-beam_etl_state}"
PG_DATA="$SERVICES_DIR/postgres"
MY_PORT="${BEAM_ETL_MYSQL_PORT:-53306}"
MY_USER="${BEAM_ETL_MYSQL_USER:-beam_etl}"
MY_PASSWORD="${BEAM_ETL_MYSQL_PASSWORD:-beam_etl_test_pw}"
MY_DB="${BEAM_ETL_MYSQL_DB:-beam_etl_test}"
MY_DATA="$SERVICES_DIR/mariadb"
MY_SOCK="$MY_DATA/mysqld.sock"
MONGO_PORT="${BEAM_ETL_MONGO_PORT:-57017}"
FERRETDB_MODULE="github.com/FerretDB/FerretDB"  # v1; the server is its ./cmd/ferretdb
FERRETDB_VERSION="v1.24.2"
FERRETDB_DATA="$SERVICES_DIR/ferretdb"
S3_PORT="${BEAM_ETL_S3_PORT:-55900}"
AWS_KEY="testing"
AWS_SECRET="testing"
AWS_REGION_NAME="us-east-1"
MOTO_REQUIREMENT="$(grep -E '^moto(\[[^]]*\])?==' "$ROOT/requirements-dev.txt" 2>/dev/null | head -1 || true)"
MOTO_REQUIREMENT="${MOTO_REQUIREMENT:-moto[server]==5.2.5}"
KAFKA_PORT="${BEAM_ETL_KAFKA_PORT:-59092}"                 # client (PLAINTEXT) listener
KAFKA_CONTROLLER_PORT="${BEAM_ETL_KAFKA_CONTROLLER_PORT:-59093}"  # KRaft controller listener
KAFKA_VERSION="4.4.0"           # org.apache.kafka:kafka_2.13 from Maven Central, run with the JDK
KAFKA_CLUSTER_ID="YmVhbV9ldGxfa2Fma2FfMQ"  # fixed; base64url of the 16 bytes "beam_etl_kafka_1"
KAFKA_HEAP="${BEAM_ETL_KAFKA_HEAP:--Xmx512m -Xms256m}"
KAFKA_DATA="$SERVICES_DIR/kafka"
PROM_PORT="${BEAM_ETL_PROMETHEUS_PORT:-59090}"
METRICS_PORT="${BEAM_ETL_METRICS_PORT:-59108}"  # the --metrics-port of the beam_etl run Prometheus scrapes
PROM_DATA="$SERVICES_DIR/prometheus"

log() { echo "services.sh: $*" >&2; }
die() { log "$*"; exit 1; }

usage() {
  sed -n '2,18s/^# \{0,1\}//p' "$SELF" >&2
  exit 2
}

canonical() {  # canonical NAME -> prints the service name, or fails
  case "$1" in
    postgres|postgresql|pg) echo postgres ;;
    mariadb|mysql) echo mariadb ;;
    ferretdb|mongo|mongodb) echo ferretdb ;;
    s3|moto) echo s3 ;;
    kafka) echo kafka ;;
    prometheus|prom) echo prometheus ;;
    *) return 1 ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# helpers

port_open() {  # port_open PORT: something accepts TCP connections on 127.0.0.1:PORT
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

tail_log() {  # tail_log FILE...: the last lines of each log that exists
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 30 "$f" >&2
    echo "-----" >&2
  done
}

fail_service() {  # fail_service NAME MESSAGE LOG...: explain, show the logs, exit 1
  local name="$1" msg="$2"
  shift 2
  log "$name: FAILED: $msg"
  tail_log "$@"
  exit 1
}

wait_until() {  # wait_until SECONDS PID CMD...: run CMD until it succeeds; 2 if PID died, 1 on timeout
  local deadline=$((SECONDS + $1)) pid="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 2; fi
    if [ "$SECONDS" -ge "$deadline" ]; then return 1; fi
    sleep 0.5
  done
}

pid_matches() {  # pid_matches PID PATTERN: PID is alive and its command line contains PATTERN
  local pid="$1"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

listener_pid() {  # listener_pid PORT: pid of the process listening on 127.0.0.1:PORT (needs ss)
  command -v ss >/dev/null || return 0
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1
}

service_pid() {  # service_pid PIDFILE PORT PATTERN: our process for a service, if it runs
  local pid=""
  [ -s "$1" ] && pid="$(head -1 "$1")"
  if ! pid_matches "$pid" "$3"; then
    pid="$(listener_pid "$2")"
    pid_matches "$pid" "$3" || pid=""
  fi
  echo "$pid"
}

stop_pid() {  # stop_pid NAME PID: SIGTERM, wait up to $WAIT_S, then SIGKILL
  local name="$1" pid="$2"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until "$WAIT_S" "" bash -c "! kill -0 $pid 2>/dev/null"; then
    log "$name: pid $pid ignored SIGTERM for ${WAIT_S}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 10 "" bash -c "! kill -0 $pid 2>/dev/null" || die "$name: pid $pid does not exit"
  fi
}

start_background() {  # start_background LOG CMD...: detached from this shell; prints the pid
  local logfile="$1"
  shift
  echo "==== $(date -u +%FT%TZ) scripts/services.sh starts: $*" >>"$logfile"
  setsid nohup "$@" </dev/null >>"$logfile" 2>&1 &
  echo $!
}

apt_install() {  # apt_install PACKAGE...: waits for a running apt/dpkg (e.g. /tmp/apt_mariadb.log)
  command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
  [ "$(id -u)" = 0 ] || die "installing $* needs root (apt-get)"
  log "installing $* with apt-get (waits up to 10 min for another apt/dpkg run to finish)"
  if ! DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get -o DPkg::Lock::Timeout=600 install -y -q \
      --no-install-recommends "$@" >"$RUN_DIR/apt-$1.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get -o DPkg::Lock::Timeout=600 update -q \
      >>"$RUN_DIR/apt-$1.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get -o DPkg::Lock::Timeout=600 install -y -q \
      --no-install-recommends "$@" >>"$RUN_DIR/apt-$1.log" 2>&1 \
      || { tail_log "$RUN_DIR/apt-$1.log"; die "apt-get install $* failed (log: $RUN_DIR/apt-$1.log)"; }
  fi
}

ensure_traversable() {  # ensure_traversable USER DIR: USER may pass through every parent of DIR
  # The server runs as USER (postgres/mysql) but the data lives under root's home (mode 700 here).
  # Grant search (x) only, never read, to that user: with an ACL when possible, else o+x.
  local user="$1" dir="$2" d parts=() acl_ok=1
  d="$dir"
  while [ "$d" != "/" ] && [ -n "$d" ]; do parts=("$d" "${parts[@]}"); d="$(dirname "$d")"; done
  for d in "${parts[@]}"; do
    [ -d "$d" ] || continue
    runuser -u "$user" -- test -x "$d" 2>/dev/null && continue
    if [ "$acl_ok" = 1 ] && ! command -v setfacl >/dev/null; then (apt_install acl) || acl_ok=0; fi
    if [ "$acl_ok" = 1 ] && setfacl -m "u:$user:x" "$d" 2>/dev/null; then
      log "granted $user search permission (ACL u:$user:x) on $d"
    else
      chmod o+x "$d"
      log "granted search permission (chmod o+x) on $d so $user can reach $dir"
    fi
  done
}

check_socket_path() {  # Unix socket paths are limited to 107 bytes
  [ "${#1}" -lt 100 ] || die "socket path $1 is too long for a Unix socket; set a shorter BEAM_ETL_SERVICES_DIR"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL: its own cluster in $PG_DATA, run as the postgres OS user

pg_bin() { find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -1; }

pg_login() {  # a real password login over TCP, as the tests do it
  [ -n "${PG_BIN:-}" ] || PG_BIN="$(pg_bin)"
  [ -x "$PG_BIN/psql" ] || return 1
  [ "$(cd / && PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=3 timeout 10 "$PG_BIN/psql" -X -tA \
    -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -c 'SELECT 1' 2>/dev/null)" = 1 ]
}

pg_local() {  # psql as the superuser over the cluster's own socket (trust, root/postgres only)
  (cd / && PGCONNECT_TIMEOUT=5 timeout 30 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
    -h "$PG_DATA" -p "$PG_PORT" -U "$PG_USER" -d postgres "$@")
}

pg_running_pid() {
  [ -s "$PG_DATA/postmaster.pid" ] || return 0
  local pid
  pid="$(head -1 "$PG_DATA/postmaster.pid")"
  if pid_matches "$pid" "-D $PG_DATA "; then echo "$pid"; fi
}

up_postgres() {
  local log="$RUN_DIR/postgres.log"
  if pg_login; then log "postgres: already running on $HOST:$PG_PORT"; return 0; fi
  PG_BIN="$(pg_bin)"
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/pg_ctl" ]; then
    apt_install postgresql postgresql-client
    PG_BIN="$(pg_bin)"
    [ -x "$PG_BIN/pg_ctl" ] || die "postgres: no pg_ctl under /usr/lib/postgresql/*/bin after installing postgresql"
  fi
  id postgres >/dev/null 2>&1 || die "postgres: the postgres OS user does not exist (broken postgresql package?)"
  command -v openssl >/dev/null || apt_install openssl
  check_socket_path "$PG_DATA/.s.PGSQL.$PG_PORT"
  mkdir -p "$PG_DATA"
  chown postgres:postgres "$PG_DATA"
  chmod 700 "$PG_DATA"
  ensure_traversable postgres "$PG_DATA"
  touch "$log" && chown postgres:postgres "$log"

  if [ ! -s "$PG_DATA/PG_VERSION" ]; then
    log "postgres: initdb $PG_DATA ($PG_BIN)"
    local pwfile
    pwfile="$(mktemp)"
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    if ! (cd / && runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_USER" --pwfile="$pwfile" \
        -E UTF8 --no-locale --auth-local=trust --auth-host=scram-sha-256) >"$RUN_DIR/postgres-initdb.log" 2>&1; then
      rm -f "$pwfile"
      fail_service postgres "initdb failed" "$RUN_DIR/postgres-initdb.log"
    fi
    rm -f "$pwfile"
  fi
  local have_version want_version
  have_version="$(cat "$PG_DATA/PG_VERSION")"
  want_version="$(basename "$(dirname "$PG_BIN")")"
  [ "$have_version" = "$want_version" ] || die "postgres: $PG_DATA holds a PostgreSQL $have_version cluster but \
the installed server is $want_version; remove $PG_DATA (its data is lost) or install postgresql-$have_version"

  # TLS with a self-signed certificate, so tests can use sslmode=require.
  if [ ! -s "$PG_DATA/server.crt" ] || [ ! -s "$PG_DATA/server.key" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$HOST" \
      -addext "subjectAltName=IP:$HOST,DNS:localhost" \
      -keyout "$PG_DATA/server.key" -out "$PG_DATA/server.crt" >"$RUN_DIR/postgres-openssl.log" 2>&1 \
      || fail_service postgres "openssl could not make the TLS certificate" "$RUN_DIR/postgres-openssl.log"
    chown postgres:postgres "$PG_DATA/server.key" "$PG_DATA/server.crt"
    chmod 600 "$PG_DATA/server.key"
  fi
  # Our settings, rewritten on every start; postgresql.conf includes them last.
  cat >"$PG_DATA/beam_etl.conf" <<EOF
# written by scripts/services.sh; edits are overwritten on the next \`up\`
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_DATA'
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
max_connections = 200
EOF
  grep -q "^include_if_exists = 'beam_etl.conf'" "$PG_DATA/postgresql.conf" \
    || echo "include_if_exists = 'beam_etl.conf'" >>"$PG_DATA/postgresql.conf"
  cat >"$PG_DATA/pg_hba.conf" <<EOF
# written by scripts/services.sh. The socket lives in the data dir (mode 700): only root and postgres reach it.
local all all trust
host  all all $HOST/32 scram-sha-256
EOF
  chown postgres:postgres "$PG_DATA/beam_etl.conf" "$PG_DATA/pg_hba.conf"

  if [ -z "$(pg_running_pid)" ]; then
    if port_open "$PG_PORT"; then
      fail_service postgres "port $PG_PORT is taken by another process: $(ss -Hltnp "sport = :$PG_PORT" 2>/dev/null)" "$log"
    fi
    log "postgres: starting on $HOST:$PG_PORT (data $PG_DATA)"
    # Right after a crash the old postmaster.pid can still name a process (a zombie, or backends not
    # yet gone); the server then refuses to start. Retry that case until the wait runs out.
    local deadline=$((SECONDS + WAIT_S)) left
    while :; do
      left=$((deadline - SECONDS))
      [ "$left" -ge 5 ] || left=5
      if (cd / && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$log" -w -t "$left" start) \
          >"$RUN_DIR/postgres-ctl.log" 2>&1; then
        break
      fi
      if [ "$SECONDS" -ge "$deadline" ] || ! grep -q "another server might be running" "$RUN_DIR/postgres-ctl.log" \
          || [ -n "$(pg_running_pid)" ]; then
        fail_service postgres "pg_ctl start failed or timed out (${WAIT_S}s)" "$RUN_DIR/postgres-ctl.log" "$log"
      fi
      sleep 2
    done
  else
    # Running but the login failed (first start interrupted, or settings changed): reload them.
    (cd / && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" reload) >/dev/null 2>&1 || true
  fi
  head -1 "$PG_DATA/postmaster.pid" >"$RUN_DIR/postgres.pid"
  wait_until "$WAIT_S" "" pg_local -tAc 'SELECT 1' \
    || fail_service postgres "no answer on its socket in $PG_DATA within ${WAIT_S}s" "$log"

  local db sq_pw="${PG_PASSWORD//\'/\'\'}"
  pg_local -c "ALTER ROLE \"$PG_USER\" WITH SUPERUSER LOGIN PASSWORD '$sq_pw'" >/dev/null \
    || fail_service postgres "could not set the password of role $PG_USER" "$log"
  for db in "$PG_DB" "$PG_STATE_DB"; do
    if [ "$(pg_local -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
      pg_local -c "CREATE DATABASE \"$db\" OWNER \"$PG_USER\"" \
        || fail_service postgres "could not create database $db" "$log"
    fi
  done
  wait_until "$WAIT_S" "" pg_login \
    || fail_service postgres "password login as $PG_USER to $HOST:$PG_PORT/$PG_DB failed for ${WAIT_S}s" "$log"
  log "postgres: ready on $HOST:$PG_PORT (databases $PG_DB, $PG_STATE_DB; TLS available)"
}

down_postgres() {
  local pid
  pid="$(pg_running_pid)"
  if [ -z "$pid" ]; then log "postgres: not running"; rm -f "$RUN_DIR/postgres.pid"; return 0; fi
  PG_BIN="$(pg_bin)"
  log "postgres: stopping (pid $pid)"
  (cd / && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t "$WAIT_S" stop) \
    >"$RUN_DIR/postgres-ctl.log" 2>&1 || stop_pid postgres "$pid"
  rm -f "$RUN_DIR/postgres.pid"
}

# ---------------------------------------------------------------------------------------------
# MariaDB: its own instance in $MY_DATA; mariadbd starts as root and switches to the mysql user

my_bin() {  # my_bin NAME...: the first of these programs that exists
  local n
  for n in "$@"; do
    if command -v "$n" >/dev/null; then command -v "$n"; return 0; fi
    if [ -x "/usr/sbin/$n" ]; then echo "/usr/sbin/$n"; return 0; fi
  done
}

my_login() {
  local client
  client="$(my_bin mariadb mysql)"
  [ -n "$client" ] || return 1
  [ "$(MYSQL_PWD="$MY_PASSWORD" timeout 10 "$client" --no-defaults --protocol=TCP -h "$HOST" -P "$MY_PORT" \
    -u "$MY_USER" --connect-timeout=3 -N -B -e 'SELECT 1' "$MY_DB" 2>/dev/null)" = 1 ]
}

my_root() {  # the client as MariaDB's root, over the instance's socket (unix_socket auth)
  timeout 30 "$(my_bin mariadb mysql)" --no-defaults --socket="$MY_SOCK" -u root --connect-timeout=3 "$@"
}

my_running_pid() {
  local pid=""
  [ -s "$MY_DATA/mariadbd.pid" ] && pid="$(head -1 "$MY_DATA/mariadbd.pid")"
  if pid_matches "$pid" "--datadir=$MY_DATA "; then echo "$pid"; return 0; fi
  pid="$(service_pid "$RUN_DIR/mariadb.pid" "$MY_PORT" "--datadir=$MY_DATA ")"
  echo "$pid"
}

up_mariadb() {
  local log="$RUN_DIR/mariadb.log"
  if my_login; then log "mariadb: already running on $HOST:$MY_PORT"; return 0; fi
  if [ -z "$(my_bin mariadbd mysqld)" ] || [ -z "$(my_bin mariadb-install-db mysql_install_db)" ] \
      || [ -z "$(my_bin mariadb mysql)" ]; then
    if pgrep -f "apt-get.*mariadb" >/dev/null 2>&1; then
      log "mariadb: an apt-get install of MariaDB is running (see /tmp/apt_mariadb.log); waiting for it"
    fi
    apt_install mariadb-server mariadb-client
  fi
  local mariadbd install_db
  mariadbd="$(my_bin mariadbd mysqld)"
  install_db="$(my_bin mariadb-install-db mysql_install_db)"
  [ -n "$mariadbd" ] && [ -n "$install_db" ] || die "mariadb: mariadbd / mariadb-install-db still missing after install"
  id mysql >/dev/null 2>&1 || die "mariadb: the mysql OS user does not exist (broken mariadb-server package?)"
  check_socket_path "$MY_SOCK"
  mkdir -p "$MY_DATA"
  chown mysql:mysql "$MY_DATA"
  chmod 750 "$MY_DATA"
  ensure_traversable mysql "$MY_DATA"
  touch "$log" && chown mysql:mysql "$log"

  if [ ! -d "$MY_DATA/mysql" ]; then
    log "mariadb: mariadb-install-db --datadir=$MY_DATA"
    (cd / && "$install_db" --no-defaults --user=mysql --datadir="$MY_DATA" --auth-root-authentication-method=socket \
      --skip-test-db) >"$RUN_DIR/mariadb-install.log" 2>&1 \
      || fail_service mariadb "mariadb-install-db failed" "$RUN_DIR/mariadb-install.log"
  fi

  local pid
  pid="$(my_running_pid)"
  if [ -z "$pid" ]; then
    if port_open "$MY_PORT"; then
      fail_service mariadb "port $MY_PORT is taken by another process: $(ss -Hltnp "sport = :$MY_PORT" 2>/dev/null)" "$log"
    fi
    rm -f "$MY_SOCK" "$MY_SOCK.lock"
    log "mariadb: starting on $HOST:$MY_PORT (data $MY_DATA)"
    # --no-defaults: /etc/mysql/my.cnf belongs to the system instance (port 3306, /run/mysqld).
    pid="$(cd / && start_background "$log" "$mariadbd" --no-defaults --user=mysql --datadir="$MY_DATA" \
      --bind-address="$HOST" --port="$MY_PORT" --socket="$MY_SOCK" --pid-file="$MY_DATA/mariadbd.pid" \
      --log-error="$log" --skip-name-resolve --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci)"
  fi
  echo "$pid" >"$RUN_DIR/mariadb.pid"
  local rc=0
  wait_until "$WAIT_S" "$pid" my_root -N -B -e 'SELECT 1' || rc=$?
  [ "$rc" = 0 ] || fail_service mariadb "$([ "$rc" = 2 ] && echo "mariadbd exited" \
    || echo "no answer on $MY_SOCK within ${WAIT_S}s")" "$log"

  local sq_pw="${MY_PASSWORD//\'/\'\'}" host sql
  sql="CREATE DATABASE IF NOT EXISTS \`$MY_DB\` CHARACTER SET utf8mb4;"
  for host in '%' "$HOST" localhost; do
    sql+="CREATE USER IF NOT EXISTS '$MY_USER'@'$host' IDENTIFIED BY '$sq_pw';"
    sql+="ALTER USER '$MY_USER'@'$host' IDENTIFIED BY '$sq_pw';"
    sql+="GRANT ALL PRIVILEGES ON *.* TO '$MY_USER'@'$host' WITH GRANT OPTION;"
  done
  my_root -e "$sql" >"$RUN_DIR/mariadb-setup.log" 2>&1 \
    || fail_service mariadb "could not create user $MY_USER / database $MY_DB" "$RUN_DIR/mariadb-setup.log"
  wait_until "$WAIT_S" "$pid" my_login \
    || fail_service mariadb "password login as $MY_USER to $HOST:$MY_PORT/$MY_DB failed" "$log"
  log "mariadb: ready on $HOST:$MY_PORT (database $MY_DB, socket $MY_SOCK)"
}

down_mariadb() {
  local pid admin
  pid="$(my_running_pid)"
  if [ -z "$pid" ]; then log "mariadb: not running"; rm -f "$RUN_DIR/mariadb.pid"; return 0; fi
  log "mariadb: stopping (pid $pid)"
  admin="$(my_bin mariadb-admin mysqladmin)"
  if [ -n "$admin" ]; then
    timeout "$WAIT_S" "$admin" --no-defaults --socket="$MY_SOCK" -u root --connect-timeout=3 shutdown \
      >/dev/null 2>&1 || true
  fi
  stop_pid mariadb "$pid"
  rm -f "$RUN_DIR/mariadb.pid"
}

# ---------------------------------------------------------------------------------------------
# FerretDB v1 (MongoDB wire protocol) on its SQLite backend, built once with `go install`

FERRETDB_BIN="$BIN_DIR/ferretdb-$FERRETDB_VERSION"

mongo_ping() {
  timeout 15 "$PYTHON" - "mongodb://$HOST:$MONGO_PORT/" <<'EOF' >/dev/null 2>&1
import sys
import pymongo
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
assert client.admin.command("ping")["ok"] == 1
EOF
}

build_ferretdb() {
  # `go install .../cmd/ferretdb@v1.24.2` builds, but the binary panics at start: the module zip lacks
  # build/version/version.txt (FerretDB generates it from git). So: fetch the module through the Go
  # module proxy, add version.txt to a copy of its source, and `go build` there. Cached by version.
  [ -x "$FERRETDB_BIN" ] && return 0
  local go
  go="$(command -v go || true)"
  [ -n "$go" ] || { [ -x /usr/local/go/bin/go ] && go=/usr/local/go/bin/go; }
  [ -n "$go" ] || die "ferretdb: Go is not installed; FerretDB is built from the Go module $FERRETDB_MODULE@$FERRETDB_VERSION"
  mkdir -p "$BIN_DIR"
  local tmp src build_log="$RUN_DIR/ferretdb-build.log"
  tmp="$(mktemp -d "$BIN_DIR/build.XXXXXX")"
  log "ferretdb: building $FERRETDB_MODULE/cmd/ferretdb@$FERRETDB_VERSION from the Go module proxy (a few minutes the first time)"
  export GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 GOTOOLCHAIN=local
  if ! src="$(cd / && timeout 600 "$go" mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION" 2>>"$build_log" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')" || [ -z "$src" ] || [ ! -d "$src/cmd/ferretdb" ]; then
    rm -rf "$tmp"
    fail_service ferretdb "go mod download $FERRETDB_MODULE@$FERRETDB_VERSION failed (is module \
$FERRETDB_MODULE@$FERRETDB_VERSION served by the Go module proxy?)" "$build_log"
  fi
  cp -R "$src" "$tmp/src"
  chmod -R u+w "$tmp/src"
  echo "$FERRETDB_VERSION" >"$tmp/src/build/version/version.txt"
  if ! (cd "$tmp/src" && timeout 1200 "$go" build -trimpath -o "$tmp/ferretdb" ./cmd/ferretdb) >>"$build_log" 2>&1; then
    rm -rf "$tmp"
    fail_service ferretdb "go build of $FERRETDB_MODULE@$FERRETDB_VERSION failed" "$build_log"
  fi
  "$tmp/ferretdb" --version >>"$build_log" 2>&1 || { rm -rf "$tmp"; fail_service ferretdb "the built binary does not run" "$build_log"; }
  mv "$tmp/ferretdb" "$FERRETDB_BIN"
  rm -rf "$tmp"
  ln -sfn "$(basename "$FERRETDB_BIN")" "$BIN_DIR/ferretdb"
  log "ferretdb: built $FERRETDB_BIN"
}

ferretdb_pid() { service_pid "$RUN_DIR/ferretdb.pid" "$MONGO_PORT" "--listen-addr=$HOST:$MONGO_PORT "; }

up_ferretdb() {
  local log="$RUN_DIR/ferretdb.log"
  if mongo_ping; then log "ferretdb: already running on $HOST:$MONGO_PORT"; return 0; fi
  "$PYTHON" -c 'import pymongo' 2>/dev/null || die "ferretdb: $PYTHON lacks pymongo (make install) for the health check"
  build_ferretdb
  local pid
  pid="$(ferretdb_pid)"
  if [ -z "$pid" ]; then
    if port_open "$MONGO_PORT"; then
      fail_service ferretdb "port $MONGO_PORT is taken by another process: $(ss -Hltnp "sport = :$MONGO_PORT" 2>/dev/null)" "$log"
    fi
    mkdir -p "$FERRETDB_DATA" "$RUN_DIR/ferretdb-state"
    log "ferretdb: starting on $HOST:$MONGO_PORT (SQLite files in $FERRETDB_DATA)"
    pid="$(cd / && start_background "$log" "$FERRETDB_BIN" --listen-addr="$HOST:$MONGO_PORT" \
      --handler=sqlite --sqlite-url="file:$FERRETDB_DATA/" --state-dir="$RUN_DIR/ferretdb-state" \
      --telemetry=disable --debug-addr=- --log-level=info)"
    echo "$pid" >"$RUN_DIR/ferretdb.pid"
  fi
  local rc=0
  wait_until "$WAIT_S" "$pid" mongo_ping || rc=$?
  [ "$rc" = 0 ] || fail_service ferretdb "$([ "$rc" = 2 ] && echo "ferretdb exited" \
    || echo "no MongoDB ping answer on $HOST:$MONGO_PORT within ${WAIT_S}s")" "$log"
  log "ferretdb: ready on $HOST:$MONGO_PORT (no auth)"
}

down_ferretdb() {
  local pid
  pid="$(ferretdb_pid)"
  if [ -z "$pid" ]; then log "ferretdb: not running"; rm -f "$RUN_DIR/ferretdb.pid"; return 0; fi
  log "ferretdb: stopping (pid $pid)"
  stop_pid ferretdb "$pid"
  rm -f "$RUN_DIR/ferretdb.pid"
}

# ---------------------------------------------------------------------------------------------
# S3: moto in server mode (state in memory: it is empty after every start)

s3_get() { curl -fsS -m 3 -o /dev/null "http://$HOST:$S3_PORT/"; }

moto_pid() { service_pid "$RUN_DIR/s3.pid" "$S3_PORT" "moto.server -H $HOST -p $S3_PORT"; }

up_s3() {
  local log="$RUN_DIR/s3.log"
  command -v curl >/dev/null || apt_install curl
  if s3_get 2>/dev/null; then log "s3: already running on $HOST:$S3_PORT"; return 0; fi
  if ! "$PYTHON" -c 'import moto.server, flask, flask_cors' 2>/dev/null; then
    log "s3: installing $MOTO_REQUIREMENT into $PYTHON"
    "$PYTHON" -m pip install -q "$MOTO_REQUIREMENT" >"$RUN_DIR/s3-pip.log" 2>&1 \
      || fail_service s3 "pip install $MOTO_REQUIREMENT failed" "$RUN_DIR/s3-pip.log"
  fi
  local pid
  pid="$(moto_pid)"
  if [ -z "$pid" ]; then
    if port_open "$S3_PORT"; then
      fail_service s3 "port $S3_PORT is taken by another process: $(ss -Hltnp "sport = :$S3_PORT" 2>/dev/null)" "$log"
    fi
    log "s3: starting moto on $HOST:$S3_PORT"
    pid="$(cd / && AWS_ACCESS_KEY_ID="$AWS_KEY" AWS_SECRET_ACCESS_KEY="$AWS_SECRET" \
      AWS_DEFAULT_REGION="$AWS_REGION_NAME" start_background "$log" "$PYTHON" -m moto.server -H "$HOST" -p "$S3_PORT")"
    echo "$pid" >"$RUN_DIR/s3.pid"
  fi
  local rc=0
  wait_until "$WAIT_S" "$pid" s3_get || rc=$?
  [ "$rc" = 0 ] || fail_service s3 "$([ "$rc" = 2 ] && echo "moto exited" \
    || echo "no HTTP answer on http://$HOST:$S3_PORT/ within ${WAIT_S}s")" "$log"
  log "s3: ready on http://$HOST:$S3_PORT (moto; buckets live in memory)"
}

down_s3() {
  local pid
  pid="$(moto_pid)"
  if [ -z "$pid" ]; then log "s3: not running"; rm -f "$RUN_DIR/s3.pid"; return 0; fi
  log "s3: stopping (pid $pid)"
  stop_pid s3 "$pid"
  rm -f "$RUN_DIR/s3.pid"
}

# ---------------------------------------------------------------------------------------------
# Kafka: one KRaft node (broker + controller in one JVM) from the Maven Central jars of
# org.apache.kafka:kafka_2.13, fetched once with `mvn dependency:copy-dependencies`

KAFKA_HOME="$BIN_DIR/kafka-$KAFKA_VERSION"  # libs/: the jars; libs/.complete marks a whole download
KAFKA_CONFIG="$KAFKA_DATA/server.properties"

kafka_ping() {  # a real Metadata request, answered by our broker (node 1 on our port)
  timeout 15 "$PYTHON" - "$HOST:$KAFKA_PORT" <<'EOF' >/dev/null 2>&1
import sys
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1], "socket.connection.setup.timeout.ms": 3000})
brokers = admin.list_topics(timeout=5).brokers
assert 1 in brokers and brokers[1].port == int(sys.argv[1].rsplit(":", 1)[1]), brokers
EOF
}

kafka_java() {  # prints the path of a java >= 17 (Kafka 4's broker needs 17), installing one if missing
  local java major
  java="$(command -v java || true)"
  if [ -z "$java" ]; then
    apt_install default-jre-headless >&2
    java="$(command -v java || true)"
    [ -n "$java" ] || die "kafka: no java on PATH after installing default-jre-headless"
  fi
  major="$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')"
  [ "${major%%.*}" -ge 17 ] 2>/dev/null \
    || die "kafka: $java is Java ${major:-?}; Kafka $KAFKA_VERSION needs Java 17 or newer (apt-get install openjdk-17-jre-headless)"
  echo "$java"
}

fetch_kafka() {
  # kafka_2.13's POM pins slf4j-api 1.7 and no logging backend, so the broker would log nothing;
  # like Kafka's own distribution, add slf4j-api 2 and log4j's SLF4J 2 binding. Cached by version.
  [ -f "$KAFKA_HOME/libs/.complete" ] && return 0
  local java="$1"
  command -v mvn >/dev/null || apt_install maven
  mkdir -p "$BIN_DIR"
  local tmp fetch_log="$RUN_DIR/kafka-fetch.log"
  tmp="$(mktemp -d "$BIN_DIR/kafka-fetch.XXXXXX")"
  cat >"$tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <!-- written by scripts/services.sh to fetch the Kafka broker's jars -->
  <modelVersion>4.0.0</modelVersion>
  <groupId>beam_etl.services</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.25.5</version></dependency>
  </dependencies>
</project>
EOF
  log "kafka: fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its runtime dependencies from Maven Central (once)"
  if ! (cd "$tmp" && timeout 900 mvn -B -ntp org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp/libs") >"$fetch_log" 2>&1; then
    rm -rf "$tmp"
    fail_service kafka "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION with its dependencies" "$fetch_log"
  fi
  if [ "$("$java" -cp "$tmp/libs/*" kafka.Kafka --version 2>>"$fetch_log" | tail -1)" != "$KAFKA_VERSION" ]; then
    rm -rf "$tmp"
    fail_service kafka "the fetched jars do not run kafka.Kafka --version" "$fetch_log"
  fi
  touch "$tmp/libs/.complete"
  rm -rf "$KAFKA_HOME"
  mkdir -p "$KAFKA_HOME"
  mv "$tmp/libs" "$KAFKA_HOME/libs"
  rm -rf "$tmp"
  log "kafka: $(find "$KAFKA_HOME/libs" -name '*.jar' | wc -l) jars in $KAFKA_HOME/libs"
}

kafka_write_config() {  # our settings, rewritten on every `up`
  mkdir -p "$KAFKA_DATA/data"
  cat >"$KAFKA_CONFIG" <<EOF
# written by scripts/services.sh; edits are overwritten on the next \`up\`
# One KRaft node: broker and controller in one process, static quorum of one voter.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$KAFKA_DATA/data

# Tests create their topics explicitly.
auto.create.topics.enable=false
delete.topic.enable=true
num.partitions=1
default.replication.factor=1
min.insync.replicas=1

# Internal topics on one node; fewer partitions than the defaults (50) so they appear quickly.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
# a killed producer's open transaction is aborted soon after its transaction.timeout.ms, not up to 10 s later
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Test data does not need to live long.
log.retention.hours=24
log.retention.check.interval.ms=60000
log.segment.bytes=67108864

# 2 CPUs
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
  cat >"$KAFKA_DATA/log4j2.properties" <<'EOF'
# written by scripts/services.sh; the broker logs to stdout, which goes to run/kafka.log
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
# the full config dumps (hundreds of lines per start); the settings are in server.properties
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
EOF
}

kafka_pid() { service_pid "$RUN_DIR/kafka.pid" "$KAFKA_PORT" "kafka.Kafka $KAFKA_CONFIG"; }

up_kafka() {
  local log="$RUN_DIR/kafka.log"
  "$PYTHON" -c 'import confluent_kafka' 2>/dev/null \
    || die "kafka: $PYTHON lacks confluent_kafka (make install) for the health check"
  if kafka_ping; then log "kafka: already running on $HOST:$KAFKA_PORT"; return 0; fi
  local java
  java="$(kafka_java)"
  fetch_kafka "$java"
  local pid
  pid="$(kafka_pid)"
  if [ -z "$pid" ]; then
    local port
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
      if port_open "$port"; then
        fail_service kafka "port $port is taken by another process: $(ss -Hltnp "sport = :$port" 2>/dev/null)" "$log"
      fi
    done
    kafka_write_config
    local meta="$KAFKA_DATA/data/meta.properties" have_id
    if [ ! -s "$meta" ]; then
      log "kafka: formatting $KAFKA_DATA/data (cluster id $KAFKA_CLUSTER_ID)"
      (cd / && timeout 120 "$java" -Xmx256m -Dlog4j2.configurationFile="$KAFKA_DATA/log4j2.properties" \
        -cp "$KAFKA_HOME/libs/*" kafka.tools.StorageTool format --config "$KAFKA_CONFIG" \
        --cluster-id "$KAFKA_CLUSTER_ID" --ignore-formatted) >"$RUN_DIR/kafka-format.log" 2>&1 \
        || fail_service kafka "kafka.tools.StorageTool format failed" "$RUN_DIR/kafka-format.log"
    fi
    have_id="$(sed -n 's/^cluster\.id=//p' "$meta")"
    [ "$have_id" = "$KAFKA_CLUSTER_ID" ] || die "kafka: $KAFKA_DATA/data belongs to cluster '$have_id', \
not $KAFKA_CLUSTER_ID; remove $KAFKA_DATA (its topics are lost) and run up again"
    local heap=()
    read -r -a heap <<<"$KAFKA_HEAP"
    log "kafka: starting Kafka $KAFKA_VERSION (KRaft) on $HOST:$KAFKA_PORT, controller $HOST:$KAFKA_CONTROLLER_PORT (data $KAFKA_DATA/data)"
    pid="$(cd / && start_background "$log" "$java" "${heap[@]}" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$KAFKA_DATA/log4j2.properties" -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$KAFKA_CONFIG")"
    echo "$pid" >"$RUN_DIR/kafka.pid"
  fi
  local rc=0
  wait_until "$WAIT_S" "$pid" kafka_ping || rc=$?
  [ "$rc" = 0 ] || fail_service kafka "$([ "$rc" = 2 ] && echo "the Kafka JVM exited" \
    || echo "no Metadata answer from $HOST:$KAFKA_PORT within ${WAIT_S}s")" "$log"
  log "kafka: ready on $HOST:$KAFKA_PORT (Kafka $KAFKA_VERSION, KRaft, PLAINTEXT, no auth; auto topic creation off)"
}

down_kafka() {
  local pid
  pid="$(kafka_pid)"
  if [ -z "$pid" ]; then log "kafka: not running"; rm -f "$RUN_DIR/kafka.pid"; return 0; fi
  log "kafka: stopping (pid $pid)"
  stop_pid kafka "$pid"
  rm -f "$RUN_DIR/kafka.pid"
}

kafka_topic() {  # kafka_topic NAME [PARTITIONS]: create unless it exists; grow a smaller one
  [ "$#" -ge 1 ] && [ "$#" -le 2 ] || { log "usage: scripts/services.sh kafka-topic NAME [PARTITIONS]"; exit 2; }
  local name="$1" partitions="${2:-1}"
  [[ "$name" =~ ^[A-Za-z0-9._-]{1,249}$ ]] && [ "$name" != . ] && [ "$name" != .. ] \
    || { log "kafka-topic: bad topic name '$name' (letters, digits, '.', '_', '-'; at most 249)"; exit 2; }
  [[ "$partitions" =~ ^[1-9][0-9]{0,4}$ ]] \
    || { log "kafka-topic: PARTITIONS must be a positive integer, got '$partitions'"; exit 2; }
  "$PYTHON" -c 'import confluent_kafka' 2>/dev/null || die "kafka-topic: $PYTHON lacks confluent_kafka (make install)"
  kafka_ping || die "kafka is not running on $HOST:$KAFKA_PORT: start it with scripts/services.sh up kafka"
  timeout 90 "$PYTHON" - "$HOST:$KAFKA_PORT" "$name" "$partitions" <<'EOF'
import sys
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

bootstrap, name, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
admin = AdminClient({"bootstrap.servers": bootstrap})


def say(msg):
    print(f"services.sh: kafka-topic: {msg}", file=sys.stderr)


def partitions():
    topic = admin.list_topics(timeout=10).topics.get(name)
    return None if topic is None or topic.error is not None else topic.partitions


try:
    have = partitions()
    if have is None:
        try:
            admin.create_topics([NewTopic(name, want, 1)], operation_timeout=30, request_timeout=40)[name].result()
            say(f"created topic {name} with {want} partition(s)")
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            have = partitions()
    if have is not None and len(have) < want:
        admin.create_partitions([NewPartitions(name, want)], operation_timeout=30, request_timeout=40)[name].result()
        say(f"topic {name} grew from {len(have)} to {want} partitions")
    elif have is not None and len(have) > want:
        say(f"topic {name} exists with {len(have)} partitions, more than {want}; Kafka cannot remove partitions "
            f"(delete the topic to recreate it)")
        sys.exit(1)
    elif have is not None:
        say(f"topic {name} exists with {want} partition(s)")
    deadline = time.monotonic() + 30  # until every partition has a leader, so producers can start at once
    while True:
        have = partitions() or {}
        if len(have) >= want and all(p.leader >= 0 for p in have.values()):
            break
        if time.monotonic() > deadline:
            say(f"topic {name}: not every partition has a leader after 30 s: {have}")
            sys.exit(1)
        time.sleep(0.2)
except KafkaException as e:
    say(f"topic {name}: {e.args[0]}")
    sys.exit(1)
EOF
}

# ---------------------------------------------------------------------------------------------
# Prometheus: the Debian package's binary (its systemd unit is left alone), run with our config:
# it scrapes the beam_etl run that serves --metrics-port $METRICS_PORT every second

PROM_BIN="/usr/bin/prometheus"
PROM_CONFIG="$PROM_DATA/prometheus.yml"

prom_ready() { curl -fsS -m 3 -o /dev/null "http://$HOST:$PROM_PORT/-/ready"; }

prometheus_pid() { service_pid "$RUN_DIR/prometheus.pid" "$PROM_PORT" "--config.file=$PROM_CONFIG "; }

prometheus_write_config() {  # rewritten on every `up`; returns 0 when the file changed
  mkdir -p "$PROM_DATA/data"
  local new="$PROM_CONFIG.new"
  cat >"$new" <<EOF
# written by scripts/services.sh; edits are overwritten on the next \`up\`
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 15s
scrape_configs:
  - job_name: beam_etl  # python -m beam_etl.run ... --metrics-port $METRICS_PORT
    static_configs:
      - targets: ["$HOST:$METRICS_PORT"]
EOF
  if cmp -s "$new" "$PROM_CONFIG"; then rm -f "$new"; return 1; fi
  mv "$new" "$PROM_CONFIG"
}

up_prometheus() {
  local log="$RUN_DIR/prometheus.log" changed=0 pid
  command -v curl >/dev/null || apt_install curl
  [ -x "$PROM_BIN" ] || apt_install prometheus
  [ -x "$PROM_BIN" ] || die "prometheus: no $PROM_BIN after installing the prometheus package"
  if prometheus_write_config; then changed=1; fi
  pid="$(prometheus_pid)"
  if [ -n "$pid" ] && prom_ready; then
    if [ "$changed" = 1 ]; then
      kill -HUP "$pid"
      log "prometheus: reloaded its config (it scrapes $HOST:$METRICS_PORT now)"
    fi
    log "prometheus: already running on http://$HOST:$PROM_PORT"
    return 0
  fi
  if [ -z "$pid" ]; then
    if port_open "$PROM_PORT"; then
      fail_service prometheus "port $PROM_PORT is taken by another process: $(ss -Hltnp "sport = :$PROM_PORT" 2>/dev/null)" "$log"
    fi
    log "prometheus: starting $("$PROM_BIN" --version 2>&1 | head -1 | cut -d' ' -f1-3) on http://$HOST:$PROM_PORT (data $PROM_DATA/data)"
    pid="$(cd / && start_background "$log" "$PROM_BIN" --config.file="$PROM_CONFIG" \
      --storage.tsdb.path="$PROM_DATA/data" --storage.tsdb.retention.time=2d \
      --web.listen-address="$HOST:$PROM_PORT" --log.level=warn)"
    echo "$pid" >"$RUN_DIR/prometheus.pid"
  fi
  local rc=0
  wait_until "$WAIT_S" "$pid" prom_ready || rc=$?
  [ "$rc" = 0 ] || fail_service prometheus "$([ "$rc" = 2 ] && echo "prometheus exited" \
    || echo "not ready on http://$HOST:$PROM_PORT/-/ready within ${WAIT_S}s")" "$log"
  log "prometheus: ready on http://$HOST:$PROM_PORT (job beam_etl scrapes $HOST:$METRICS_PORT/metrics every 1s)"
}

down_prometheus() {
  local pid
  pid="$(prometheus_pid)"
  if [ -z "$pid" ]; then log "prometheus: not running"; rm -f "$RUN_DIR/prometheus.pid"; return 0; fi
  log "prometheus: stopping (pid $pid)"
  stop_pid prometheus "$pid"
  rm -f "$RUN_DIR/prometheus.pid"
}

# ---------------------------------------------------------------------------------------------
# commands

endpoint() {
  case "$1" in
    postgres) echo "postgresql://$PG_USER@$HOST:$PG_PORT/$PG_DB" ;;
    mariadb) echo "mysql://$MY_USER@$HOST:$MY_PORT/$MY_DB" ;;
    ferretdb) echo "mongodb://$HOST:$MONGO_PORT/" ;;
    s3) echo "http://$HOST:$S3_PORT" ;;
    kafka) echo "$HOST:$KAFKA_PORT (bootstrap; controller :$KAFKA_CONTROLLER_PORT)" ;;
    prometheus) echo "http://$HOST:$PROM_PORT (scrapes $HOST:$METRICS_PORT/metrics)" ;;
  esac
}

status_one() {  # prints one line; returns 0 when healthy
  local name="$1" healthy=1 port pid
  case "$name" in
    postgres) port="$PG_PORT"; pg_login && healthy=0; pid="$(pg_running_pid)" ;;
    mariadb) port="$MY_PORT"; my_login && healthy=0; pid="$(my_running_pid)" ;;
    ferretdb) port="$MONGO_PORT"; mongo_ping && healthy=0; pid="$(ferretdb_pid)" ;;
    s3) port="$S3_PORT"; s3_get 2>/dev/null && healthy=0; pid="$(moto_pid)" ;;
    kafka) port="$KAFKA_PORT"; kafka_ping && healthy=0; pid="$(kafka_pid)" ;;
    prometheus) port="$PROM_PORT"; prom_ready 2>/dev/null && healthy=0; pid="$(prometheus_pid)" ;;
  esac
  local state=stopped
  if [ "$healthy" = 0 ]; then state=running
  elif [ -n "$pid" ] || port_open "$port"; then state=unhealthy
  fi
  printf '%-9s %-9s %-52s %s\n' "$name" "$state" "$(endpoint "$name")" "${pid:+pid $pid}"
  return "$healthy"
}

print_env() {
  q() { printf 'export %s=%q\n' "$1" "$2"; }
  q BEAM_ETL_SERVICES_DIR "$SERVICES_DIR"
  q BEAM_ETL_PG_HOST "$HOST"
  q BEAM_ETL_PG_PORT "$PG_PORT"
  q BEAM_ETL_PG_USER "$PG_USER"
  q BEAM_ETL_PG_PASSWORD "$PG_PASSWORD"
  q BEAM_ETL_PG_DB "$PG_DB"
  q BEAM_ETL_PG_STATE_DB "$PG_STATE_DB"
  q BEAM_ETL_PG_DSN "postgresql://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT/$PG_DB"
  q BEAM_ETL_MYSQL_HOST "$HOST"
  q BEAM_ETL_MYSQL_PORT "$MY_PORT"
  q BEAM_ETL_MYSQL_USER "$MY_USER"
  q BEAM_ETL_MYSQL_PASSWORD "$MY_PASSWORD"
  q BEAM_ETL_MYSQL_DB "$MY_DB"
  q BEAM_ETL_MONGO_URI "mongodb://$HOST:$MONGO_PORT/"
  q BEAM_ETL_S3_ENDPOINT "http://$HOST:$S3_PORT"
  q AWS_ACCESS_KEY_ID "$AWS_KEY"
  q AWS_SECRET_ACCESS_KEY "$AWS_SECRET"
  q AWS_DEFAULT_REGION "$AWS_REGION_NAME"
  q AWS_REGION "$AWS_REGION_NAME"
  q BEAM_ETL_KAFKA_BOOTSTRAP "$HOST:$KAFKA_PORT"
  q BEAM_ETL_PROMETHEUS_URL "http://$HOST:$PROM_PORT"
  q BEAM_ETL_METRICS_PORT "$METRICS_PORT"
}

take_lock() {
  exec 9>"$SERVICES_DIR/.lock"
  if ! flock -n 9; then
    log "another services.sh holds $SERVICES_DIR/.lock; waiting (up to 30 min)"
    flock -w 1800 9 || die "timed out waiting for $SERVICES_DIR/.lock"
  fi
}

main() {
  local cmd="${1:-}"
  [ -n "$cmd" ] || usage
  shift
  case "$cmd" in
    -h|--help|help) usage ;;
    env) print_env; return 0 ;;
    kafka-topic) mkdir -p "$RUN_DIR"; kafka_topic "$@"; return 0 ;;
    _one) # internal: `_one up|down NAME` in a child bash, so `set -e` covers each service alone
      mkdir -p "$RUN_DIR"
      CURRENT_SERVICE="$2"
      set -E
      trap 'log "$CURRENT_SERVICE: FAILED at line $LINENO of scripts/services.sh: $BASH_COMMAND"' ERR
      "$1_$2"
      return 0 ;;
    up|down|status) ;;
    *) log "unknown command: $cmd"; usage ;;
  esac

  local names=() n c
  for n in "$@"; do
    c="$(canonical "$n")" || { log "unknown service: $n (known: ${ALL_SERVICES[*]})"; exit 2; }
    [[ " ${names[*]:-} " == *" $c "* ]] || names+=("$c")
  done
  [ "${#names[@]}" -gt 0 ] || names=("${ALL_SERVICES[@]}")

  mkdir -p "$SERVICES_DIR" "$RUN_DIR"
  if [ "$cmd" = status ]; then
    local rc=0
    for n in "${names[@]}"; do status_one "$n" || rc=3; done
    return "$rc"
  fi

  take_lock
  local failed=() started=$SECONDS
  for n in "${names[@]}"; do
    bash "$SELF" _one "$cmd" "$n" 9>&- || failed+=("$n")
  done
  if [ "${#failed[@]}" -gt 0 ]; then
    log "$cmd failed for: ${failed[*]} (logs in $RUN_DIR)"
    exit 1
  fi
  [ "$cmd" = up ] && log "all up in $((SECONDS - started))s: ${names[*]} (scripts/services.sh env prints the settings)"
  return 0
}

main "$@"
