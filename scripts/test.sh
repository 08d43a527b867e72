#!/usr/bin/env bash
# Runs every test of the repository, fastest first, so that a break shows early:
#   lint -> unit -> sanity -> modules (pyroute2 0.9 and 0.7) -> daemon -> bench smoke -> roles
#   -> fleet -> vm
# Usage: scripts/test.sh [STAGE...]     (default: all stages, in that order)
# It bootstraps itself (apt + .venv) first; run it as root on Debian 12 / Ubuntu 24.04.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

bash scripts/bootstrap.sh
export PATH="$REPO/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$REPO/build/collections"
PYTEST=(python -m pytest -p no:cacheprovider)

banner() { printf '\n==== %s ====\n' "$*"; }

# pytest exits 5 when it collects nothing: a stage whose test folder exists must have tests,
# so 5 is a failure there, reported in words.
pytest_stage() {
  local rc=0
  "${PYTEST[@]}" "$@" || rc=$?
  if [ "$rc" = 5 ]; then echo "FAIL: pytest collected no tests in: $*" >&2; fi
  return "$rc"
}

stage_lint() {
  banner "lint: ruff"
  ruff check .
  ruff format --check .
  if [ -d roles ] && ls roles/*/tasks/main.yml >/dev/null 2>&1; then
    banner "lint: ansible-lint (production profile)"
    ansible-lint --profile production --offline
  fi
  banner "lint: changelog (fragments valid, CHANGELOG.md rendered from them)"
  antsibull-changelog lint
  bash scripts/changelog.sh --check
  banner "lint: the README's topology picture is what inventories/example draws"
  python tools/topology.py --check
}

stage_unit() {
  banner "unit: pure logic (module planning, daemon config)"
  local dirs=()
  for d in tests/unit tests/nsproxy/unit; do [ -d "$d" ] && dirs+=("$d"); done
  pytest_stage "${dirs[@]}"
}

stage_sanity() {
  banner "sanity: ansible-test sanity + units on the collection as built (ansible-galaxy collection build)"
  local artifact=build/artifact stage=build/ansible-test/ansible_collections/tenantnet/nsproxy
  rm -rf "$artifact" build/ansible-test && mkdir -p "$artifact" "$stage"
  # ansible-test downloads its pip bootstrap from a host CI cannot reach: use the offline stand-in.
  [ -f ~/.ansible/test/cache/get_pip_24_2.py ] || install -D -m 0644 tools/ansible_test_get_pip.py ~/.ansible/test/cache/get_pip_24_2.py
  ansible-galaxy collection build --output-path "$artifact" .
  tar -xzf "$artifact"/tenantnet-nsproxy-*.tar.gz -C "$stage"
  # ansible-test lists files with git; its own output (tests/output) is not part of the artifact.
  printf 'tests/output/\n' > "$stage/.gitignore"
  (cd "$stage" && git init -q && git add -A && \
   ansible-test sanity --venv --python 3.11 --color no && \
   ansible-test units --venv --python 3.11 --color no)
  banner "sanity: the artifact (contents, ansible-builder introspect)"
  ARTIFACT=$(ls "$artifact"/tenantnet-nsproxy-*.tar.gz) pytest_stage tests/collection -v
}

stage_modules() {
  banner "integration: modules, real kernel objects in sandboxes (pyroute2 0.9 and 0.7)"
  pytest_stage tests/integration -v
}

stage_daemon() {
  [ -d tests/nsproxy ] || { echo "no daemon tests yet"; return 0; }
  # Every daemon test runs with one worker and with two (conftest.py reads the variable);
  # the process-model tests choose their own worker count, so they run in the second pass only.
  banner "daemon: nsproxy with real namespaces, sockets and clients (workers: 1)"
  NSPROXY_TEST_WORKERS=1 pytest_stage tests/nsproxy -v --ignore=tests/nsproxy/unit \
    --ignore-glob='tests/nsproxy/test_workers_*' --ignore=tests/nsproxy/test_netns_identity.py \
    --ignore=tests/nsproxy/test_health_checks.py
  banner "daemon: nsproxy with real namespaces, sockets and clients (workers: 2)"
  NSPROXY_TEST_WORKERS=2 pytest_stage tests/nsproxy -v
}

stage_bench() {
  [ -d tests/bench ] || { echo "no benchmark smoke test yet"; return 0; }
  banner "bench: smoke run (N=3, 1 s) checks every field is produced"
  pytest_stage tests/bench -v
}

stage_roles() {
  [ -d tests/roles ] || { echo "no role tests yet"; return 0; }
  banner "roles: site.yml in a sandbox with its own Docker engine"
  pytest_stage tests/roles -v
}

stage_fleet() {
  [ -d tests/fleet ] || { echo "no fleet tests yet"; return 0; }
  banner "fleet: site.yml across three container hosts (the VM stage's Debian 12 root, docker import)"
  # The image is the VM stage's (one cache): built here when missing, then found by the vm stage.
  local t=$SECONDS
  bash molecule/default/vm/build-image.sh >/dev/null
  echo "-- host image ready in $((SECONDS - t)) s"
  pytest_stage tests/fleet -v
}

stage_vm() {
  banner "vm: molecule default scenario in a QEMU VM"
  (cd "$REPO" && bash molecule/default/vm/build-image.sh >/dev/null && molecule test -s default)
}

ALL=(lint unit sanity modules daemon bench roles fleet vm)
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=("${ALL[@]}")
for s in "${stages[@]}"; do
  declare -F "stage_$s" >/dev/null || { echo "unknown stage '$s' (choose from: ${ALL[*]})" >&2; exit 2; }
done
start=$SECONDS
for s in "${stages[@]}"; do
  t=$SECONDS
  "stage_$s"
  echo "-- stage $s passed in $((SECONDS - t)) s"
done
banner "all stages passed (${stages[*]}) in $((SECONDS - start)) s"
