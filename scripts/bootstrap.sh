#!/usr/bin/env bash
# Installs everything the demo and the tests need, on Debian 12 / Ubuntu 24.04, as root:
# Debian packages (apt) and a virtualenv at .venv (pip). Idempotent: a stamp keyed by the
# package lists makes a second call return at once.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-pip python3-pyroute2   # 0.7.x pass of the modules
  iproute2 util-linux procps kmod iptables             # sandbox and kernel objects
  curl openssl socat jq rsync git                      # real clients in tests
  shellcheck graphviz                                  # ansible-test sanity's shellcheck; README pictures (dot)
  docker.io apparmor busybox-static python3-requests python3-apt  # container tests (local image); what docker_host installs
  haproxy nginx-light wrk                              # benchmark contenders
  prometheus                                           # promtool: the shipped alert rules, real scrapes
  logrotate python3-setproctitle                       # what the nsproxy role installs (role tests run offline)
  qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client  # molecule VM
)

[ "$(id -u)" = 0 ] || { echo "bootstrap: run as root (it installs packages and creates namespaces)" >&2; exit 1; }

inputs=(requirements-dev.txt "$0")
[ -f src/nsproxy/pyproject.toml ] && inputs+=(src/nsproxy/pyproject.toml)
stamp=.venv/.bootstrap-$(cat "${inputs[@]}" | sha256sum | cut -c1-16)
[ -f "$stamp" ] && exit 0

echo "== bootstrap: apt packages"
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

echo "== bootstrap: virtualenv .venv"
[ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements-dev.txt
[ -f src/nsproxy/pyproject.toml ] && .venv/bin/pip install -q -e "src/nsproxy[fast,titles]"

# The collection as ansible sees it: build/collections/ansible_collections/tenantnet/nsproxy.
mkdir -p build/collections/ansible_collections/tenantnet
ln -sfn "$PWD" build/collections/ansible_collections/tenantnet/nsproxy

rm -f .venv/.bootstrap-*
touch "$stamp"
echo "== bootstrap: done"
