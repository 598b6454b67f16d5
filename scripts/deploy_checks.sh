#!/usr/bin/env bash
# Static checks of the deployment code: deploy/terraform/aws and .github/workflows.
# Idempotent; every install and every check is bounded in time. See docs/deploy.md.
#
#   scripts/deploy_checks.sh install     install the tools when missing (cached, fast afterwards)
#   scripts/deploy_checks.sh check       install, then run every check (the default; make deploy-check)
#   scripts/deploy_checks.sh checkov | actionlint | terraform    install, then run one check
#   scripts/deploy_checks.sh paths       print NAME=PATH of each tool (empty when missing)
#
# Tools, each pinned:
#   checkov     PyPI, in its own virtualenv .tools/checkov (never the project's environment);
#               frameworks terraform (with the variable defaults, then with
#               examples/production.tfvars) and github_actions; zero failed checks required, and
#               no parsing errors (a file checkov cannot parse would otherwise pass unscanned)
#   actionlint  built with `go install` into $BEAM_ETL_TOOLS_DIR/bin; runs shellcheck on every
#               run: script when shellcheck is installed (Debian's package; installed with apt-get
#               when running as root), and this script itself is checked with shellcheck too
#   terraform   the one on PATH (>= 1.5), else built from the Go module proxy (the newest release
#               without replace directives, so `go install` accepts it); optional: when it cannot
#               be had, its checks are reported as skipped. `terraform fmt -check` must pass;
#               `terraform validate` runs when `terraform init -backend=false` can install the
#               hashicorp/aws provider (from the registry, or from $TF_PLUGIN_DIR: a filesystem
#               mirror, passed as -plugin-dir), and is reported as skipped with the reason otherwise.
#
# Environment: PYTHON (python3), BEAM_ETL_TOOLS_DIR (~/.cache/beam_etl/tools), TERRAFORM (a
# terraform binary to use), TF_PLUGIN_DIR, DEPLOY_CHECKS_TF_DIR and DEPLOY_CHECKS_WORKFLOWS_DIR
# (check other copies; the tests use temporary ones).
# Exit codes: 0 every check passed (terraform validate may be skipped, as printed); 1 a check
# failed; 2 bad usage; 3 a required tool (checkov, actionlint) could not be installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TOOLS_DIR="${BEAM_ETL_TOOLS_DIR:-$HOME/.cache/beam_etl/tools}"
BIN_DIR="$TOOLS_DIR/bin"
TF_DIR="${DEPLOY_CHECKS_TF_DIR:-$ROOT/deploy/terraform/aws}"
WORKFLOWS_DIR="${DEPLOY_CHECKS_WORKFLOWS_DIR:-$ROOT/.github/workflows}"

CHECKOV_VERSION="3.3.30"
CHECKOV_VENV="$ROOT/.tools/checkov"
CHECKOV="$CHECKOV_VENV/bin/checkov"
ACTIONLINT_VERSION="v1.7.12"
ACTIONLINT="$BIN_DIR/actionlint"
TERRAFORM_VERSION="1.8.5"
TERRAFORM_MIN="1.5.0"
PINNED_TERRAFORM="$BIN_DIR/terraform-$TERRAFORM_VERSION"
INSTALL_TIMEOUT_S="${BEAM_ETL_TOOLS_TIMEOUT_S:-900}"

log() { printf '[deploy-checks] %s\n' "$*" >&2; }
die() { log "$1"; exit "${2:-1}"; }

usage() {
  sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------------------------

with_install_lock() {
  mkdir -p "$TOOLS_DIR"
  if command -v flock >/dev/null; then
    (flock -w "$INSTALL_TIMEOUT_S" 9 || die "another install held $TOOLS_DIR/.install.lock for ${INSTALL_TIMEOUT_S}s" 3
     "$@") 9>"$TOOLS_DIR/.install.lock"
  else
    "$@"
  fi
}

checkov_installed() {
  [[ -x "$CHECKOV" ]] && [[ "$("$CHECKOV" --version 2>/dev/null)" == "$CHECKOV_VERSION" ]]
}

install_checkov() {
  checkov_installed && return 0
  log "installing checkov==$CHECKOV_VERSION into $CHECKOV_VENV (its own virtualenv, ~1 min)"
  rm -rf "$CHECKOV_VENV"
  "$PYTHON" -m venv "$CHECKOV_VENV" || die "cannot create a virtualenv with $PYTHON -m venv" 3
  if ! timeout "$INSTALL_TIMEOUT_S" "$CHECKOV_VENV/bin/python" -m pip install -q --disable-pip-version-check \
      "checkov==$CHECKOV_VERSION"; then
    rm -rf "$CHECKOV_VENV"
    die "pip could not install checkov==$CHECKOV_VERSION (is PyPI reachable?)" 3
  fi
  checkov_installed || die "checkov $CHECKOV_VERSION did not install correctly ($CHECKOV --version)" 3
}

install_actionlint() {
  if [[ -x "$ACTIONLINT" ]] && [[ "$("$ACTIONLINT" -version 2>/dev/null | head -n 1)" == "$ACTIONLINT_VERSION" ]]; then
    return 0
  fi
  command -v go >/dev/null || die "Go is needed to build actionlint (go install github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION)" 3
  log "building actionlint $ACTIONLINT_VERSION into $BIN_DIR (go install, ~30 s the first time)"
  mkdir -p "$BIN_DIR"
  if ! (cd "$TOOLS_DIR" && GOBIN="$BIN_DIR" GOFLAGS=-buildvcs=false timeout "$INSTALL_TIMEOUT_S" \
      go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"); then
    die "go install github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION failed (is the Go module proxy reachable?)" 3
  fi
}

install_shellcheck() {
  command -v shellcheck >/dev/null && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "installing shellcheck (apt-get install shellcheck)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get install -y -q shellcheck >/dev/null 2>&1 \
      || { timeout 300 apt-get update -q >/dev/null 2>&1 && timeout 300 apt-get install -y -q shellcheck >/dev/null 2>&1; } \
      || log "WARNING: apt-get could not install shellcheck; actionlint runs without checking run: scripts"
  else
    log "WARNING: shellcheck is not installed (apt-get install shellcheck); actionlint runs without checking run: scripts"
  fi
}

version_at_least() {  # version_at_least HAVE WANT
  [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]
}

terraform_version_of() {
  "$1" version -json 2>/dev/null | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["terraform_version"])' 2>/dev/null
}

find_terraform() {
  local candidate version
  for candidate in "${TERRAFORM:-}" "$PINNED_TERRAFORM" "$(command -v terraform || true)"; do
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    version="$(terraform_version_of "$candidate")" || continue
    version="${version%%-*}"
    if version_at_least "$version" "$TERRAFORM_MIN"; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

install_terraform() {
  find_terraform >/dev/null && return 0
  if ! command -v go >/dev/null; then
    log "WARNING: no terraform >= $TERRAFORM_MIN on PATH and no Go to build one; terraform checks will be skipped"
    return 0
  fi
  # Releases from 1.9 on carry replace directives in go.mod, which `go install pkg@version` refuses.
  log "building terraform $TERRAFORM_VERSION into $BIN_DIR (go install from the Go module proxy, ~3 min the first time)"
  mkdir -p "$BIN_DIR"
  local build_dir
  build_dir="$(mktemp -d)"
  if (cd "$TOOLS_DIR" && GOBIN="$build_dir" GOFLAGS=-buildvcs=false timeout "$INSTALL_TIMEOUT_S" \
      go install -ldflags "-X github.com/hashicorp/terraform/version.dev=no" \
      "github.com/hashicorp/terraform@v$TERRAFORM_VERSION"); then
    mv "$build_dir/terraform" "$PINNED_TERRAFORM"
  else
    log "WARNING: go install github.com/hashicorp/terraform@v$TERRAFORM_VERSION failed; terraform checks will be skipped"
  fi
  rm -rf "$build_dir"
}

install_all() {
  install_checkov
  install_actionlint
  install_shellcheck
  install_terraform
}

print_paths() {
  printf 'checkov=%s\n' "$(checkov_installed && printf '%s' "$CHECKOV")"
  printf 'actionlint=%s\n' "$([[ -x "$ACTIONLINT" ]] && printf '%s' "$ACTIONLINT")"
  printf 'shellcheck=%s\n' "$(command -v shellcheck || true)"
  printf 'terraform=%s\n' "$(find_terraform || true)"
}

# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

SUMMARY=()
FAILED=0

# checkov_scan LABEL ARGS...: one checkov run; fails on any failed check, parsing error, or an
# empty scan (nothing found to check would otherwise pass).
checkov_scan() {
  local label="$1" out summary
  shift
  out="$(mktemp -d)"
  local rc=0
  timeout 300 "$CHECKOV" --skip-download --compact --quiet -o cli -o json --output-file-path "$out" "$@" \
    >/dev/null 2>"$out/stderr" || rc=$?
  if [[ ! -s "$out/results_json.json" ]]; then
    log "checkov $label: no result (exit $rc)"
    tail -n 20 "$out/stderr" >&2
    SUMMARY+=("checkov $CHECKOV_VERSION $label: ERROR (no result, exit $rc)")
    FAILED=1
    rm -rf "$out"
    return
  fi
  summary="$("$CHECKOV_VENV/bin/python" - "$out/results_json.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
reports = data if isinstance(data, list) else [data]
totals = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0}
for report in reports:
    for key in totals:
        totals[key] += int(report.get("summary", {}).get(key, 0))
print(" ".join(f"{k}={v}" for k, v in totals.items()))
PY
)"
  cat "$out/results_cli.txt"
  local failed parsing passed
  failed="$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$summary")"
  parsing="$(sed -n 's/.*parsing_errors=\([0-9]*\).*/\1/p' <<<"$summary")"
  passed="$(sed -n 's/.*passed=\([0-9]*\).*/\1/p' <<<"$summary")"
  if [[ "$failed" == 0 && "$parsing" == 0 && "$passed" -gt 0 ]]; then
    SUMMARY+=("checkov $CHECKOV_VERSION $label: passed ($summary)")
  else
    SUMMARY+=("checkov $CHECKOV_VERSION $label: FAILED ($summary)")
    FAILED=1
  fi
  rm -rf "$out"
}

run_checkov() {
  log "checkov $CHECKOV_VERSION: $TF_DIR (terraform) and $WORKFLOWS_DIR (github_actions)"
  checkov_scan "terraform (variable defaults)" -d "$TF_DIR" --framework terraform
  if [[ -f "$TF_DIR/examples/production.tfvars" ]]; then
    checkov_scan "terraform (examples/production.tfvars)" -d "$TF_DIR" --framework terraform \
      --var-file "$TF_DIR/examples/production.tfvars"
  fi
  checkov_scan "github_actions" -d "$WORKFLOWS_DIR" --framework github_actions
}

run_actionlint() {
  local shellcheck_path findings rc=0
  shellcheck_path="$(command -v shellcheck || true)"
  log "actionlint $ACTIONLINT_VERSION over $WORKFLOWS_DIR (shellcheck: ${shellcheck_path:-not installed})"
  local files=()
  while IFS= read -r -d '' f; do files+=("$f"); done \
    < <(find "$WORKFLOWS_DIR" -maxdepth 1 -type f \( -name '*.yml' -o -name '*.yaml' \) -print0 | sort -z)
  if [[ ${#files[@]} == 0 ]]; then
    SUMMARY+=("actionlint $ACTIONLINT_VERSION: FAILED (no workflow files in $WORKFLOWS_DIR)")
    FAILED=1
    return
  fi
  findings="$(timeout 120 "$ACTIONLINT" -no-color -shellcheck="$shellcheck_path" -pyflakes= "${files[@]}" 2>&1)" || rc=$?
  if [[ $rc == 0 ]]; then
    local with="shellcheck not installed: run: scripts unchecked"
    [[ -n "$shellcheck_path" ]] && with="with shellcheck $(shellcheck --version | sed -n 's/^version: //p')"
    SUMMARY+=("actionlint $ACTIONLINT_VERSION: passed, 0 findings in ${#files[@]} workflows ($with)")
  else
    printf '%s\n' "$findings"
    SUMMARY+=("actionlint $ACTIONLINT_VERSION: FAILED ($(grep -c '^.*:[0-9]*:[0-9]*: ' <<<"$findings" || true) findings, exit $rc)")
    FAILED=1
  fi
  # actionlint knows the inputs of popular actions by major version (actions/checkout@v4), not by
  # the exact tags the workflows pin (@v4.2.2): check the inputs again on copies with major refs.
  local major
  major="$(mktemp -d)"
  for f in "${files[@]}"; do
    sed -E 's/(uses:[[:space:]]*[^@[:space:]]+@v[0-9]+)\.[0-9][0-9.]*/\1/' "$f" >"$major/$(basename "$f")"
  done
  rc=0
  findings="$(cd "$major" && timeout 120 "$ACTIONLINT" -no-color -shellcheck= -pyflakes= ./*.y*ml 2>&1)" || rc=$?
  if [[ $rc == 0 ]]; then
    SUMMARY+=("actionlint $ACTIONLINT_VERSION: action inputs valid (refs read as major versions)")
  else
    printf 'action inputs, with each pinned tag read as its major version:\n%s\n' "$findings"
    SUMMARY+=("actionlint $ACTIONLINT_VERSION: action inputs FAILED (refs read as major versions)")
    FAILED=1
  fi
  rm -rf "$major"
  if [[ -n "$shellcheck_path" ]]; then
    if timeout 60 shellcheck "${BASH_SOURCE[0]}"; then
      SUMMARY+=("shellcheck scripts/deploy_checks.sh: passed")
    else
      SUMMARY+=("shellcheck scripts/deploy_checks.sh: FAILED")
      FAILED=1
    fi
  fi
}

run_terraform() {
  local tf version
  if ! tf="$(find_terraform)"; then
    SUMMARY+=("terraform: SKIPPED fmt and validate (no terraform >= $TERRAFORM_MIN on PATH and none could be built)")
    return
  fi
  version="$(terraform_version_of "$tf")"
  # A CLI configuration of our own unless the caller's exists (it may name provider mirrors).
  local work
  work="$(mktemp -d)"
  if [[ -z "${TF_CLI_CONFIG_FILE:-}" || ! -f "${TF_CLI_CONFIG_FILE:-}" ]]; then
    printf 'disable_checkpoint = true\n' >"$work/terraformrc"
    export TF_CLI_CONFIG_FILE="$work/terraformrc"
  fi
  export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1

  log "terraform $version ($tf): fmt -check -recursive $TF_DIR"
  if timeout 60 "$tf" -chdir="$TF_DIR" fmt -check -recursive -diff -no-color; then
    SUMMARY+=("terraform $version: fmt -check passed")
  else
    SUMMARY+=("terraform $version: fmt -check FAILED (run: terraform -chdir=deploy/terraform/aws fmt -recursive)")
    FAILED=1
  fi

  # validate in a copy, so no .terraform folder or lock file lands in the tree.
  cp -r "$TF_DIR" "$work/aws"
  rm -rf "$work/aws/.terraform" "$work/aws/.terraform.lock.hcl"
  local init_args=(-chdir="$work/aws" init -backend=false -input=false -no-color)
  [[ -n "${TF_PLUGIN_DIR:-}" ]] && init_args+=(-plugin-dir="$TF_PLUGIN_DIR")
  mkdir -p "$TOOLS_DIR/terraform-plugin-cache"
  log "terraform init -backend=false (needs the hashicorp/aws provider)"
  local init_out rc=0
  init_out="$(TF_PLUGIN_CACHE_DIR="$TOOLS_DIR/terraform-plugin-cache" timeout 300 "$tf" "${init_args[@]}" 2>&1)" || rc=$?
  if [[ $rc != 0 ]]; then
    if grep -Eq 'Failed to query available provider packages|Failed to install provider|could not connect to registry|Failed to resolve provider packages|no available releases match|provider registry .* does not have a provider' <<<"$init_out"; then
      local reason
      reason="$(awk '/Error:/ {on = 1} on' <<<"$init_out" | tr -s '\n\t ' ' ' | sed 's/^ *//; s/ *$//' | sed 's/ To see which modules.*//' | cut -c 1-400)"
      SUMMARY+=("terraform $version: validate SKIPPED: the hashicorp/aws provider could not be installed (${reason:-see terraform init output}); set TF_PLUGIN_DIR to a filesystem mirror that has it")
    else
      printf '%s\n' "$init_out"
      SUMMARY+=("terraform $version: init FAILED (not a provider download problem: see above)")
      FAILED=1
    fi
  elif timeout 300 "$tf" -chdir="$work/aws" validate -no-color; then
    SUMMARY+=("terraform $version: validate passed")
  else
    SUMMARY+=("terraform $version: validate FAILED")
    FAILED=1
  fi
  rm -rf "$work"
}

print_summary() {
  printf '\ndeploy checks:\n'
  printf '  %s\n' "${SUMMARY[@]}"
  if [[ $FAILED == 0 ]]; then
    printf 'deploy checks: OK\n'
  else
    printf 'deploy checks: FAILED\n'
  fi
}

# ---------------------------------------------------------------------------------------------

command="${1:-check}"
case "$command" in
  install)
    with_install_lock install_all
    print_paths
    ;;
  paths)
    print_paths
    ;;
  check)
    with_install_lock install_all
    run_checkov
    run_actionlint
    run_terraform
    print_summary
    exit "$FAILED"
    ;;
  checkov)
    with_install_lock install_checkov
    run_checkov
    print_summary
    exit "$FAILED"
    ;;
  actionlint)
    with_install_lock install_actionlint
    with_install_lock install_shellcheck
    run_actionlint
    print_summary
    exit "$FAILED"
    ;;
  terraform)
    with_install_lock install_terraform
    run_terraform
    print_summary
    exit "$FAILED"
    ;;
  -h|--help|help)
    usage
    ;;
  *)
    log "unknown command: $command"
    usage
    ;;
esac
