#!/usr/bin/env bash
# The whole job in one command, on this machine, without touching it:
#   1. installs what it needs (scripts/bootstrap.sh; the daemon's wheels from PyPI once);
#   2. opens a throwaway sandbox (tools/sandbox.py: own network namespace, private /run, and
#      overlays on /etc, /opt, /var/log so nothing is written to the real ones; ansible's own
#      files go to the sandbox's scratch directory too);
#   3. runs playbooks/site.yml with inventories/example: Docker Engine (dockerd in the
#      background, there is no systemd in the sandbox), three tenants that all use 10.0.0.0/24
#      (two on VLANs: on a kernel without 802.1Q they fall back to veth and say so; one on a
#      bridge), and nsproxy listening inside each tenant at 10.0.0.250:80 and :443;
#   4. runs site.yml again, which must change nothing;
#   5. from inside each tenant, sends requests that nsproxy answers with that tenant's identity:
#      one to a shared upstream in the host namespace, one to the tenant's own upstream;
#   6. cleans up: closing the sandbox ends every process it started (the upstreams inside the
#      tenant namespaces, dockerd, nsproxy) and drops its mounts; no file of the demo remains
#      (tests/roles/test_demo.py checks both).
# Usage (root, Debian 12 / Ubuntu 24.04): scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SCRATCH=/var/tmp/tenantnet-demo        # a private tmpfs inside the sandbox
WHEELHOUSE=$REPO/build/nsproxy-wheelhouse

if [ "${1:-}" != "--inside-sandbox" ]; then
  bash scripts/bootstrap.sh
  echo "== demo: the daemon's dependency wheels in $WHEELHOUSE (the sandbox has no network)"
  # One list of wheels for the demo and the role tests (tests/roles/site_sandbox.py).
  .venv/bin/python -c 'from tests.roles.site_sandbox import ensure_wheelhouse; ensure_wheelhouse()'
  echo "== demo: entering a throwaway sandbox (network + mount namespace)"
  exec .venv/bin/python tools/sandbox.py --private "$SCRATCH" --private /var/lib/docker \
    -- bash "$REPO/scripts/demo.sh" --inside-sandbox
fi

# ---- inside the sandbox from here on ------------------------------------------------------
export PATH="$REPO/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$REPO/build/collections"
export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_LOCALHOST_WARNING=0
export ANSIBLE_HOME=$SCRATCH/ansible ANSIBLE_LOCAL_TEMP=$SCRATCH/ansible/tmp \
  ANSIBLE_REMOTE_TEMP=$SCRATCH/ansible/tmp   # not ~/.ansible on the machine
TENANTS=(acme globex initech)

for dir in /etc /opt /var/log; do   # writes go to the sandbox's tmpfs, never to the machine
  layer=$SCRATCH/overlay$(echo "$dir" | tr / _)
  mkdir -p "$layer/upper" "$layer/work"
  mount -t overlay tenantnet-demo -o "lowerdir=$dir,upperdir=$layer/upper,workdir=$layer/work" "$dir"
done

# A stand-in for the trunk NIC eth1 of the example inventory (its far end plays the switch).
ip link add eth1 type veth peer name eth1-switch

# The upstreams: one shared service in the host namespace, one inside each tenant namespace.
# Each answers with the tenant nsproxy says the request came from (X-Nsproxy-Tenant).
UPSTREAM_PY='
import http.server, sys
label, port = sys.argv[1], int(sys.argv[2])
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        body = ("%s answered tenant=%s (X-Forwarded-For %s) path=%s\n" % (label,
                self.headers.get("X-Nsproxy-Tenant", "-"),
                self.headers.get("X-Forwarded-For", "-"), self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'
python3 -c "$UPSTREAM_PY" "shared upstream (host namespace)" 8080 &

# The daemon's source as it is now (without build leftovers), so both runs install the same one.
mkdir -p "$SCRATCH/nsproxy-src"
(cd src/nsproxy && tar --exclude=__pycache__ --exclude=build --exclude='*.egg-info' -cf - .) |
  tar -C "$SCRATCH/nsproxy-src" -xf -
SITE=(ansible-playbook -i inventories/example playbooks/site.yml -e @inventories/sandbox.yml
      -e "nsproxy_wheelhouse_src=$WHEELHOUSE" -e "nsproxy_source_dir=$SCRATCH/nsproxy-src")
echo "== demo: ansible-playbook -i inventories/example playbooks/site.yml (first run)"
"${SITE[@]}" | tee "$SCRATCH/run1.log" | grep -E '^(TASK|RUNNING HANDLER|PLAY RECAP|changed|fatal|\[WARNING\]|localhost)|msg' || true
grep -q 'failed=0' "$SCRATCH/run1.log" || { echo "demo: the first run failed" >&2; exit 1; }

echo "== demo: second run (must change nothing)"
"${SITE[@]}" > "$SCRATCH/run2.log" || { cat "$SCRATCH/run2.log"; exit 1; }
grep -A1 'PLAY RECAP' "$SCRATCH/run2.log"
if [ -n "${TENANTNET_DEMO_LOGS:-}" ]; then cp "$SCRATCH"/run*.log "$TENANTNET_DEMO_LOGS/"; fi
if ! grep -q 'changed=0 ' "$SCRATCH/run2.log"; then
  grep -E '^(TASK|changed)' "$SCRATCH/run2.log" | grep -B1 '^changed' >&2
  echo "demo: the second run changed something (above)" >&2
  exit 1
fi

for t in "${TENANTS[@]}"; do
  ip netns exec "$t" python3 -c "$UPSTREAM_PY" "$t's own upstream (inside netns $t)" 8081 &
done
for _ in $(seq 50); do curl -s http://127.0.0.1:8080/ >/dev/null && break; sleep 0.1; done
for t in "${TENANTS[@]}"; do
  for _ in $(seq 50); do ip netns exec "$t" curl -s http://127.0.0.1:8081/ >/dev/null && break; sleep 0.1; done
done

echo
echo "== demo: every tenant has the same address; what each one sees:"
for t in "${TENANTS[@]}"; do
  echo "-- tenant $t: $(ip -n "$t" -br addr show dev eth0 | awk '{print $1, $3}'), routes:" \
       "$(ip -n "$t" route show proto static | tr '\n' ';')"
  echo -n "   curl http://10.0.0.250/hello         -> "
  ip netns exec "$t" curl -sS --max-time 5 http://10.0.0.250/hello
  echo -n "   curl https://tenants.example/local/hello (10.0.0.250, certificate checked) -> "
  ip netns exec "$t" curl -sS --max-time 5 --cacert /etc/nsproxy/certs/example.pem \
    --resolve tenants.example:443:10.0.0.250 https://tenants.example/local/hello
done
echo
echo "== demo: done; the sandbox now closes and takes everything with it"
