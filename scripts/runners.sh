#!/usr/bin/env bash
# Fetches and starts the runner programs beam_etl's runner matrix needs. Idempotent, loopback only,
# bounded waits. Everything lands in $BEAM_ETL_RUNNERS_DIR (default ~/.cache/beam_etl/runners),
# shared by every clone on the machine; beam_etl.runners.locate reads the same layout.
#
#   scripts/runners.sh prism                 build Prism v<beam version> from Beam's Go module
#   scripts/runners.sh jobservers            fetch Beam's Flink/Spark job-server jars from Maven Central
#   scripts/runners.sh prism-server start|stop|status [PORT]   Prism as a standalone job service (8073)
#   scripts/runners.sh worker-pool start|stop|status [PORT]    Beam's Python worker pool (50000)
#   scripts/runners.sh status                what is built, fetched and running
#
# Exit codes: 0 ok, 1 failure, 3 an artifact is not served by the registry (the coordinates are printed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNNERS_DIR="${BEAM_ETL_RUNNERS_DIR:-$HOME/.cache/beam_etl/runners}"
PYTHON="${PYTHON:-python3}"
BEAM_VERSION="$(sed -n 's/^apache-beam\[[^]]*\]==\([0-9.]*\).*/\1/p' "$ROOT/requirements.txt")"
[ -n "$BEAM_VERSION" ] || { echo "runners.sh: cannot read the apache-beam pin from requirements.txt" >&2; exit 1; }
PRISM_DIR="$RUNNERS_DIR/prism-$BEAM_VERSION"
RUN_DIR="$RUNNERS_DIR/run"
mkdir -p "$RUNNERS_DIR" "$RUN_DIR"

log() { echo "runners.sh: $*" >&2; }

build_prism() {
  if [ -x "$PRISM_DIR/prism" ]; then
    log "Prism $BEAM_VERSION already built: $PRISM_DIR/prism"
    return 0
  fi
  command -v go >/dev/null || { log "Go is not installed; Prism is built from github.com/apache/beam/sdks/v2/go/cmd/prism"; exit 1; }
  log "building Prism $BEAM_VERSION (go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$BEAM_VERSION; ~2 min the first time)"
  local tmp
  tmp="$(mktemp -d "$RUNNERS_DIR/prism-build.XXXXXX")"
  if ! GOBIN="$tmp" GOFLAGS="${GOFLAGS:--buildvcs=false}" timeout 900 \
      go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$BEAM_VERSION"; then
    rm -rf "$tmp"
    log "go install failed (is github.com/apache/beam/sdks/v2@v$BEAM_VERSION served by the Go module proxy?)"
    exit 1
  fi
  mkdir -p "$PRISM_DIR"
  mv "$tmp/prism" "$PRISM_DIR/prism.partial" && mv "$PRISM_DIR/prism.partial" "$PRISM_DIR/prism"
  rm -rf "$tmp"
  log "Prism built: $PRISM_DIR/prism"
}

fetch_job_servers() {
  command -v mvn >/dev/null || { log "Maven is not installed"; exit 1; }
  mkdir -p "$RUNNERS_DIR/jars"
  local flink_versions status=0 missing=()
  flink_versions="$("$PYTHON" -c 'from apache_beam.options.pipeline_options import FlinkRunnerOptions as F; print(" ".join(F.PUBLISHED_FLINK_VERSIONS))')"
  local artifacts=()
  for v in $flink_versions; do artifacts+=("beam-runners-flink-$v-job-server"); done
  artifacts+=("beam-runners-spark-3-job-server")
  for artifact in "${artifacts[@]}"; do
    local jar="$RUNNERS_DIR/jars/$artifact-$BEAM_VERSION.jar"
    if [ -s "$jar" ]; then log "have $jar"; continue; fi
    local coords="org.apache.beam:$artifact:$BEAM_VERSION"
    if timeout 300 mvn -B -q -U dependency:copy -Dartifact="$coords" -DoutputDirectory="$RUNNERS_DIR/jars" \
        -Dmdep.overWriteReleases=true >"$RUN_DIR/mvn-$artifact.log" 2>&1; then
      log "fetched $jar"
    else
      missing+=("$coords")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "not served by the Maven registry here (mvn dependency:copy answered 'Could not find artifact'):"
    printf '  %s\n' "${missing[@]}" >&2
    log "FlinkRunner/SparkRunner need one of these jars, --<flink|spark>_job_server_jar=PATH, or --job_endpoint"
    status=3
  fi
  return $status
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_port() {  # host port seconds
  local deadline=$((SECONDS + $3))
  until "$PYTHON" -c "import socket,sys; socket.create_connection(('$1', $2), 1)" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

service() {  # name action port command...
  local name="$1" action="$2" port="$3"; shift 3
  local pidfile="$RUN_DIR/$name.pid" logfile="$RUN_DIR/$name.log"
  case "$action" in
    start)
      if pid_alive "$pidfile"; then log "$name already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return 0; fi
      nohup "$@" >"$logfile" 2>&1 &
      echo $! >"$pidfile"
      if ! wait_port 127.0.0.1 "$port" 60; then
        log "$name did not open 127.0.0.1:$port within 60 s; last log lines:"; tail -20 "$logfile" >&2; exit 1
      fi
      log "$name running (pid $(cat "$pidfile")) on 127.0.0.1:$port, log $logfile" ;;
    stop)
      if pid_alive "$pidfile"; then kill "$(cat "$pidfile")"; log "$name stopped"; else log "$name not running"; fi
      rm -f "$pidfile" ;;
    status)
      if pid_alive "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: stopped"; fi ;;
    *) log "unknown action $action (start|stop|status)"; exit 1 ;;
  esac
}

cmd="${1:-status}"
case "$cmd" in
  prism) build_prism ;;
  jobservers) fetch_job_servers ;;
  prism-server)
    port="${3:-8073}"
    [ "${2:-status}" != start ] || build_prism
    service prism-server "${2:-status}" "$port" "$PRISM_DIR/prism" --job_port "$port" --serve_http=false ;;
  worker-pool)
    port="${3:-50000}"
    service worker-pool "${2:-status}" "$port" "$PYTHON" -m apache_beam.runners.worker.worker_pool_main \
      --service_port="$port" ;;
  status)
    echo "beam version: $BEAM_VERSION   runners dir: $RUNNERS_DIR"
    if [ -x "$PRISM_DIR/prism" ]; then echo "prism: $PRISM_DIR/prism"; else echo "prism: not built (scripts/runners.sh prism)"; fi
    jars="$(ls "$RUNNERS_DIR/jars"/*.jar 2>/dev/null || true)"
    echo "job-server jars: ${jars:-none (scripts/runners.sh jobservers)}"
    service prism-server status 8073
    service worker-pool status 50000 ;;
  *) sed -n '2,14p' "$0"; exit 1 ;;
esac
