#!/usr/bin/env bash
# Installs Debian's `chromium` for the dashboard's browser test (tests/integration/test_dashboard_browser.py).
# Idempotent (does nothing when a Chromium binary is already there), non-interactive, bounded in time.
# Playwright drives this binary; its own browser download is not used (its CDN is unreachable here).
#   BEAM_ETL_CHROMIUM=/path/to/chrome   use that binary instead (nothing is installed)
#   BEAM_ETL_SKIP_CHROMIUM=1            skip (the browser test then fails, saying how to install)
#   APT_TIMEOUT=600                     seconds allowed for each apt-get call
set -euo pipefail

if [[ -n "${BEAM_ETL_SKIP_CHROMIUM:-}" ]]; then
  echo "install_chromium: skipped (BEAM_ETL_SKIP_CHROMIUM is set)"
  exit 0
fi
if [[ -n "${BEAM_ETL_CHROMIUM:-}" && -x "${BEAM_ETL_CHROMIUM}" ]]; then
  exit 0
fi
for candidate in /usr/lib/chromium/chromium /usr/bin/chromium; do
  [[ -x "$candidate" ]] && exit 0
done
command -v chromium >/dev/null 2>&1 && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: no apt-get here; install Chromium yourself and set BEAM_ETL_CHROMIUM to its binary" >&2
  exit 0
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  if sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install_chromium: not root and no passwordless sudo; run: sudo apt-get install -y chromium" >&2
    exit 1
  fi
fi

timeout_s="${APT_TIMEOUT:-600}"
apt() {
  $SUDO env DEBIAN_FRONTEND=noninteractive timeout "$timeout_s" apt-get -q -y \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -o DPkg::Lock::Timeout=120 "$@"
}
if ! apt-cache show chromium >/dev/null 2>&1; then
  echo "install_chromium: apt-get update"
  apt update >/dev/null
fi
echo "install_chromium: apt-get install chromium"
if ! apt install --no-install-recommends chromium >/dev/null; then
  echo "install_chromium: apt-get install chromium failed; retrying after apt-get update" >&2
  apt update >/dev/null
  apt install --no-install-recommends chromium >/dev/null
fi
chromium --version 2>/dev/null || true
