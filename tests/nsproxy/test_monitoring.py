"""The monitoring files the collection ships (roles/nsproxy/files/monitoring/), checked against
Prometheus' own tool and against what a real daemon exports.

- The alert rules pass ``promtool check rules``, and ``promtool test rules`` with unit tests
  (monitoring/nsproxy-alerts.test.yml) in which every alert fires and stays quiet.
- Every query of the Grafana dashboard parses as PromQL (promtool, as recording rules), and the
  dashboard's structure is what Grafana imports (panels, variables, data source references).
- Every metric name the dashboard and the alert rules use is in the catalogue (docs/metrics.md),
  and a real ``nsproxy run`` with ``metrics.listen`` exports it: the test scrapes /metrics with
  curl and names the missing ones. Its scrape passes ``promtool check metrics``.

promtool comes from Debian's ``prometheus`` package (scripts/bootstrap.sh).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.nsproxy.conftest import ADDR, http_tenant

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "roles" / "nsproxy" / "files" / "monitoring"
RULES = MONITORING / "nsproxy-alerts.yml"
DASHBOARD = MONITORING / "nsproxy-dashboard.json"
RULE_TESTS = Path(__file__).with_name("monitoring") / "nsproxy-alerts.test.yml"
CATALOGUE = REPO / "docs" / "metrics.md"
METRICS_ADDR = "127.0.0.1:9108"

# A metric name in a PromQL expression: the daemon's own families and the process_* ones.
METRIC_NAME = re.compile(r"\b(?:nsproxy|process)_[a-z0-9_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: scripts/bootstrap.sh installs Debian's prometheus")
    return path


def run_promtool(*args: str, stdin: str | None = None, cwd: Path | None = None):
    return subprocess.run(
        [promtool(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def catalogue_rows() -> dict[str, tuple[str, set[str]]]:
    """{metric name: (type, label names)} from the tables of docs/metrics.md
    (| name | type | labels | meaning |; a label's allowed values in parentheses)."""
    rows = {}
    for line in CATALOGUE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        kinds = ("counter", "gauge", "histogram", "summary")
        if len(cells) >= 3 and re.fullmatch(r"[a-z_][a-z0-9_]*", cells[0]) and cells[1] in kinds:
            labels = re.sub(r"\([^)]*\)", "", cells[2])
            rows[cells[0]] = (cells[1], {x.strip() for x in labels.split(",") if x.strip()})
    return rows


def catalogue() -> dict[str, str]:
    """{metric name: type} of the catalogue."""
    return {name: kind for name, (kind, _) in catalogue_rows().items()}


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows hold their panels
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query, variables' queries included."""
    exprs = [
        (panel["title"], target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            exprs.append((f"variable {var['name']}", var["query"]["query"]))
    return exprs


def family_of(name: str, types: dict[str, str]) -> str:
    """The family a sample or series name belongs to (histogram suffixes folded)."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and types.get(base) in ("histogram", "summary"):
            return base
    return name


def names_used() -> dict[str, set[str]]:
    """{metric family: where it is used} over the alert rules and the dashboard."""
    types = catalogue()
    used: dict[str, set[str]] = {}
    sources = [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    sources += [(f"dashboard: {title}", expr) for title, expr in dashboard_exprs()]
    for where, expr in sources:
        # label_values(metric, label) and plain selectors alike
        for name in METRIC_NAME.findall(expr):
            used.setdefault(family_of(name, types), set()).add(where)
    return used


# -- alert rules -------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_rules():
    proc = run_promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


def test_alert_rules_unit_tests_pass_promtool_test_rules():
    proc = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_is_unit_tested_firing_and_quiet():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [str(Path("../../..") / RULES.relative_to(REPO))], (
        "the unit tests must load the shipped rule file"
    )
    firing, quiet = set(), set()
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never made to fire"
    assert names - quiet == set(), "alerts never checked to stay quiet"


def test_alert_rules_have_severity_and_annotations_naming_what_failed():
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert {
        "NsproxyTenantNotServing",
        "NsproxyUpstreamServerDown",
        "NsproxyTenantHigh5xxRate",
        "NsproxyReloadFailed",
        "NsproxyFdsNearLimit",
        "NsproxyWorkersRestarting",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "$labels.instance" in rule["annotations"]["summary"], rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    for name, labels in (
        ("NsproxyTenantNotServing", ("tenant", "listen", "state")),
        ("NsproxyUpstreamServerDown", ("tenant", "upstream", "server")),
        ("NsproxyTenantHigh5xxRate", ("tenant",)),
        ("NsproxyFdsNearLimit", ("process",)),
    ):
        for label in labels:
            assert f"$labels.{label}" in by_name[name]["annotations"]["summary"], (name, label)


# -- dashboard ---------------------------------------------------------------------------------


def test_dashboard_is_an_importable_grafana_dashboard_with_a_tenant_variable():
    dash = dashboard()
    assert dash["id"] is None and dash["uid"] and dash["title"]
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    variables = {var["name"]: var for var in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["tenant"]["type"] == "query"
    assert variables["tenant"]["multi"] and variables["tenant"]["includeAll"]
    assert "tenant" in variables["tenant"]["query"]["query"]
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard_panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat", "table"), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            # Only variables the dashboard defines, and Grafana's own macros.
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables or f"${var}" in GRAFANA_MACROS, (panel["title"], var)
    # The per-tenant panels honour the tenant variable.
    tenant_exprs = [e for _, e in dashboard_exprs() if "tenant" in e and "label_values" not in e]
    assert tenant_exprs and all('tenant=~"$tenant"' in e for e in tenant_exprs)


def test_dashboard_covers_the_operator_views():
    titles = " | ".join(panel["title"] for panel in dashboard_panels())
    exprs = " ".join(e for _, e in dashboard_exprs())
    for needle in (
        'code="5xx"',
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "nsproxy_received_bytes_total",
        "nsproxy_sent_bytes_total",
        "nsproxy_active_connections",
        "nsproxy_connections_total",
        "nsproxy_refused_connections_total",
        "nsproxy_listener_state",
        "nsproxy_upstream_server_up",
        "nsproxy_config_last_reload_successful",
        "process_open_fds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "nsproxy_workers",
    ):
        assert needle in exprs, f"no panel queries {needle}"
    for title in ("Requests by status class", "Upstream latency p50 / p99", "Listeners"):
        assert title in titles


def test_dashboard_queries_parse_as_promql(tmp_path):
    """Each query, with Grafana's variables filled in, as a recording rule for promtool."""
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):  # Grafana's function, not PromQL
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr)
            assert inner, f"{title}: {expr}"
            expr = inner.group(1)
        for macro, value in GRAFANA_MACROS.items():
            expr = expr.replace(macro, value)
        expr = re.sub(r"\$\w+", ".*", expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- names against the catalogue and the daemon ------------------------------------------------


def test_dashboard_and_alerts_use_only_catalogued_metrics():
    known = catalogue()
    assert "nsproxy_requests_total" in known and "process_open_fds" in known
    unknown = {name: sorted(where) for name, where in names_used().items() if name not in known}
    assert unknown == {}, f"not in {CATALOGUE.relative_to(REPO)}: {unknown}"


def test_dashboard_and_alerts_use_only_catalogued_labels():
    """Label names in selectors and in by/without/on clauses exist on the metrics the query
    uses (or are the scrape's own: instance, job; le of a histogram)."""
    rows = catalogue_rows()
    sources = [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    sources += [(f"dashboard: {title}", expr) for title, expr in dashboard_exprs()]
    wrong = []
    for where, expr in sources:
        families = {family_of(n, catalogue()) for n in METRIC_NAME.findall(expr)}
        allowed = {"instance", "job", "le"}
        for family in families:
            allowed |= rows.get(family, ("", set()))[1]
        for name, matchers in re.findall(r"\b((?:nsproxy|process)_[a-z0-9_]+)\{([^}]*)\}", expr):
            own = rows.get(family_of(name, catalogue()), ("", set()))[1] | {"instance", "job"}
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                if label not in own:
                    wrong.append(f"{where}: {name} has no label {label}")
        for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
            for label in re.findall(r"\w+", clause):
                if label not in allowed:
                    wrong.append(f"{where}: no metric of the query has the label {label}")
    assert wrong == []


def scrape_busy_daemon(proxy) -> str:
    """Start a daemon with metrics.listen and an http, a tcp and a failing tenant; drive a 2xx,
    a 5xx from the upstream, a 502 (dead upstream server) and a tcp exchange; return /metrics."""
    proxy.add_netns("acme", "globex")
    proxy.start_echo("echo", "127.0.0.1:9811")
    acme = http_tenant("acme", ["127.0.0.1:9811"])
    globex = http_tenant("globex", ["127.0.0.1:9"])  # nothing listens on port 9: 502
    globex["listeners"].append({"listen": f"{ADDR}:7000", "protocol": "tcp", "upstream": "app"})
    globex["upstreams"]["tcp"] = {"netns": None, "servers": ["127.0.0.1:9811"]}
    globex["listeners"][1]["upstream"] = "tcp"
    proxy.write_config([acme, globex], metrics={"listen": METRICS_ADDR})
    proxy.start()
    ok = proxy.curl("acme", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDR}/ok")
    failed = proxy.curl(
        "acme", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDR}/?status=503"
    )
    dead = proxy.curl("globex", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDR}/")
    assert (ok.stdout, failed.stdout, dead.stdout) == ("200", "503", "502"), proxy.log()
    tcp = proxy.python(
        "globex",
        f"import socket; s = socket.create_connection(({ADDR!r}, 7000), timeout=5); "
        "s.sendall(b'GET /tcp HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n'); "
        "print(s.recv(12).decode())",
        check=False,
    )
    assert tcp.stdout.startswith("HTTP/1."), tcp.stdout + tcp.stderr + proxy.log()
    proc = proxy.sb.run(["curl", "-sS", "--max-time", "10", f"http://{METRICS_ADDR}/metrics"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def exported_families(text: str) -> dict[str, str]:
    """{family: type} of a scrape, parsed by prometheus_client (the reference parser)."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def counter_family(name: str) -> str:
    """prometheus_client names a counter family without its _total suffix."""
    return name.removesuffix("_total")


def test_daemon_exports_every_metric_the_dashboard_and_alerts_use(proxy):
    exported = {counter_family(name) for name in exported_families(scrape_busy_daemon(proxy))}
    missing = {
        name: sorted(where)
        for name, where in sorted(names_used().items())
        if counter_family(name) not in exported
    }
    assert missing == {}, (
        f"{len(missing)} metric(s) used by the dashboard or the alert rules are not exported by "
        f"nsproxy: {', '.join(missing)}\n" + json.dumps(missing, indent=1)
    )


def test_daemon_exports_only_catalogued_metrics_with_their_types_and_labels(proxy):
    known = {counter_family(name): row for name, row in catalogue_rows().items()}
    families = list(text_string_to_metric_families(scrape_busy_daemon(proxy)))
    assert families, "the scrape holds no metric"
    undocumented = sorted({f.name for f in families} - set(known))
    assert undocumented == [], f"exported but not in {CATALOGUE.relative_to(REPO)}"
    wrong = {}
    for family in families:
        kind, labels = known[family.name]
        if family.type != kind:
            wrong[family.name] = f"type {family.type}, catalogued {kind}"
        for sample in family.samples:
            got = set(sample.labels) - {"le"}
            if got != labels:
                wrong[family.name] = f"labels {sorted(got)}, catalogued {sorted(labels)}"
    assert wrong == {}, "exported differently from the catalogue"


def test_daemon_scrape_passes_promtool_check_metrics(proxy):
    text = scrape_busy_daemon(proxy)
    proc = run_promtool("check", "metrics", stdin=text)
    assert proc.returncode == 0, f"promtool check metrics:\n{proc.stdout}{proc.stderr}"
