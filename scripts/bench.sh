#!/usr/bin/env bash
# The benchmark in one command: nsproxy against HAProxy, nginx-per-namespace and the direct path
# at 10, 100, 1000 and 3000 tenants (one certificate per tenant), inside a throwaway sandbox.
# Arguments go to bench/run.py (see bench/README.md), e.g.
#   scripts/bench.sh --nsproxy-workers 1,2          # the binder/worker daemon, workers 1 and 2
#   scripts/bench.sh --tenants 10,100 --load-tenants 10,100 --repeat 3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python bench/run.py "$@"
