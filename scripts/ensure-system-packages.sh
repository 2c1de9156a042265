#!/usr/bin/env bash
# Install the Debian 12 packages netpacs needs, only when something is missing.
#
#   scripts/ensure-system-packages.sh run    python3.11 with venv support
#   scripts/ensure-system-packages.sh test   + DCMTK, Orthanc and its DICOMweb and
#                                              PostgreSQL plugins (benchmark peers), Chromium
#                                              (viewer tests), PostgreSQL server,
#                                              rsyslog with TLS (audit forwarder tests),
#                                              HAProxy (several-node fault tests),
#                                              etcd (PostgreSQL failover test)
#
# Idempotent and quick when everything is present: every check is a
# `command -v` / `dpkg -s` / import probe; apt-get runs only for what is missing.
# Services that packages would start on install (Orthanc, PostgreSQL) are kept
# from starting with a temporary policy-rc.d; PostgreSQL is started on demand by
# scripts/ensure-postgres.sh, Orthanc only by the benchmark (bench/store_bench.py)
# on its own ports, never as a system service holding 4242/8042.
set -euo pipefail

MODE="${1:-run}"
case "$MODE" in
  run | test) ;;
  *)
    echo "usage: $0 run|test" >&2
    exit 2
    ;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

missing=()

have_pkg() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

need_pkg() {
  # need_pkg PACKAGE...: queue each package that is not installed.
  local p
  for p in "$@"; do
    if ! have_pkg "$p"; then
      missing+=("$p")
    fi
  done
}

# --- run: python3.11 able to create a venv with pip --------------------------
# A python3.11 from pyenv (or any non-Debian build) is left alone when it can
# already make venvs; Debian's /usr/bin/python3.11 needs python3.11-venv for
# ensurepip.
py="$(command -v "${PYTHON:-python3.11}" || true)"
if [ -z "$py" ]; then
  need_pkg python3.11 python3.11-venv
else
  real_py="$(readlink -f "$py" 2>/dev/null || echo "$py")"
  if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need_pkg python3.11-venv
  elif [ "${real_py#/usr/bin/}" != "$real_py" ]; then
    # Debian's interpreter: make sure the venv package proper is there too.
    need_pkg python3.11-venv
  fi
fi

# --- test: DICOM peers and the PostgreSQL server ------------------------------
if [ "$MODE" = "test" ]; then
  for tool in storescu findscu movescu getscu storescp echoscu dcmdump; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      need_pkg dcmtk
      break
    fi
  done
  if [ ! -x /usr/sbin/Orthanc ] && ! command -v Orthanc >/dev/null 2>&1; then
    need_pkg orthanc
  fi
  # The DICOMweb benchmark peer (Orthanc's DICOMweb plugin), and Orthanc's index on
  # PostgreSQL (bench/store_bench.py --database-url).
  need_pkg orthanc-dicomweb orthanc-postgresql
  # The browser the viewer tests drive through Playwright.
  if [ ! -x /usr/bin/chromium ]; then
    need_pkg chromium
  fi
  # A real audit record repository for the audit forwarder tests: rsyslog with its
  # TLS (GnuTLS) network stream driver, run by the tests in the foreground.
  if [ ! -x /usr/sbin/rsyslogd ]; then
    need_pkg rsyslog
  fi
  need_pkg rsyslog-gnutls
  # The load balancer in front of several nodes (deploy/haproxy/haproxy.cfg), run by
  # the fault tests in the foreground on their own ports, never as a system service.
  if [ ! -x /usr/sbin/haproxy ]; then
    need_pkg haproxy
  fi
  # etcd, the DCS of the Patroni cluster the PostgreSQL failover test runs
  # (deploy/patroni); the test starts its own etcd on its own ports.
  if ! command -v etcd >/dev/null 2>&1; then
    need_pkg etcd-server
  fi
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    need_pkg postgresql
  fi
  # pg_isready / psql / pg_ctlcluster are used by ensure-postgres.sh
  if ! command -v pg_isready >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    need_pkg postgresql-client postgresql-common
  fi
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

# De-duplicate while keeping order.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++')
echo "ensure-system-packages: installing ${missing[*]}" >&2

# Keep package maintainer scripts from starting services (Orthanc would grab
# 4242/8042; PostgreSQL is started by ensure-postgres.sh). Only remove the
# policy file if we created it.
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# temporary, from netpacs scripts/ensure-system-packages.sh\nexit 101\n' |
    $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  created_policy=1
fi
cleanup() {
  if [ "$created_policy" -eq 1 ]; then
    $SUDO rm -f "$POLICY"
  fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
${SUDO:+$SUDO -E} apt-get install -y -q --no-install-recommends "${missing[@]}"

# HAProxy likewise: the fault tests start it with deploy/haproxy/haproxy.cfg.
if have_pkg haproxy; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now haproxy >/dev/null 2>&1 || true
  fi
  if [ -x /etc/init.d/haproxy ] && command -v update-rc.d >/dev/null 2>&1; then
    $SUDO update-rc.d haproxy disable >/dev/null 2>&1 || true
  fi
fi

# Orthanc must never run as a system service here: the benchmark starts its own
# instance with its own configuration and ports.
if have_pkg orthanc; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
  fi
  if [ -x /etc/init.d/orthanc ]; then
    $SUDO /etc/init.d/orthanc stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then
      $SUDO update-rc.d orthanc disable >/dev/null 2>&1 || true
    fi
  fi
  # A service instance that slipped through runs as user "orthanc" with the
  # packaged configuration directory; stop exactly those processes.
  if command -v pgrep >/dev/null 2>&1; then
    for pid in $(pgrep -u orthanc -x Orthanc 2>/dev/null || true); do
      $SUDO kill "$pid" 2>/dev/null || true
    done
  fi
fi
