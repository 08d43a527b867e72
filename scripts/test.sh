#!/usr/bin/env bash
# Runs every test of the repository, fastest first, so that a break shows early:
#   lint -> unit, sanity, modules and the VM image at once -> bench smoke -> daemon and roles at
#   once -> fleet and vm at once
# Usage: scripts/test.sh [STEP...]     (default: all steps, in that order)
# A step is a stage, or stages joined by commas, which run at the same time: each stage's lines
# are prefixed with its name ("[roles] ..."). On a 2-core machine the stages that mostly wait
# (real sockets, timeouts, a VM image build) overlap with the ones that mostly compute (ansible).
# The benchmark smoke run compares timings, so it runs alone.
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
  # The daemon tests run with two workers (conftest.py reads NSPROXY_TEST_WORKERS; "auto" is
  # two on these machines); tests that need one worker (per-worker pools, round robin, the
  # differential lab) or more choose their own count. The unit tests ran in the unit stage.
  banner "daemon: nsproxy with real namespaces, sockets and clients (workers: 2)"
  NSPROXY_TEST_WORKERS=2 pytest_stage tests/nsproxy -v --ignore=tests/nsproxy/unit
  # One worker is the same binder and worker code with no sibling: the identity and reload
  # paths again, where a sibling could hide a fault (a connection it accepts instead).
  banner "daemon: identity and reload with one worker"
  NSPROXY_TEST_WORKERS=1 pytest_stage -v tests/nsproxy/test_http_identity.py \
    tests/nsproxy/test_reload.py tests/nsproxy/test_upstreams_and_limits.py
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

stage_image() {
  banner "image: the Debian 12 root and VM image of the fleet and vm stages (cached by its inputs)"
  bash molecule/default/vm/build-image.sh >/dev/null
}

stage_vm() {
  banner "vm: molecule default scenario in a QEMU VM"
  (cd "$REPO" && bash molecule/default/vm/build-image.sh >/dev/null && molecule test -s default)
}

ALL=(lint unit,sanity,modules,image bench daemon,roles fleet,vm)

# One step: a stage, or several at once (their lines prefixed, every one awaited, the step
# failed if any of them failed).
run_step() {
  local step=$1 t=$SECONDS names pids=() failed=() i rc
  if [[ $step != *,* ]]; then
    "stage_$step"
    echo "-- stage $step passed in $((SECONDS - t)) s"
    return
  fi
  IFS=, read -ra names <<<"$step"
  for s in "${names[@]}"; do
    ( t0=$SECONDS; "stage_$s"; echo "-- stage $s passed in $((SECONDS - t0)) s" ) 2>&1 \
      | sed -u "s/^/[$s] /" &
    pids+=($!)
  done
  for i in "${!names[@]}"; do
    rc=0; wait "${pids[$i]}" || rc=$?
    [ "$rc" = 0 ] || failed+=("${names[$i]} (exit $rc)")
  done
  if [ ${#failed[@]} -gt 0 ]; then echo "-- FAILED: ${failed[*]}" >&2; exit 1; fi
  echo "-- step $step passed in $((SECONDS - t)) s"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=("${ALL[@]}")
for step in "${steps[@]}"; do
  IFS=, read -ra names <<<"$step"
  for s in "${names[@]}"; do
    declare -F "stage_$s" >/dev/null || {
      echo "unknown stage '$s' (stages: lint unit sanity modules image bench daemon roles fleet vm)" >&2
      exit 2
    }
  done
done
export PYTHONUNBUFFERED=1  # lines of stages that run at once interleave whole and in time
start=$SECONDS
for step in "${steps[@]}"; do run_step "$step"; done
banner "all steps passed (${steps[*]}) in $((SECONDS - start)) s"
