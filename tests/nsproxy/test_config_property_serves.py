"""Property (sampled): a document that ``nsproxy check`` accepts starts and serves.

Generated documents vary what check judges and the daemon uses: tenant and upstream names of
any allowed shape, namespaces in every spelling (``ta``, ``/run/netns/./ta``,
``//run/netns/ta``, ``/var/run/netns/ta``), ports over their whole range, IPv4 and IPv6
listeners, route hosts and prefixes, admin socket paths up to the 107 bytes of sun_path,
timeouts and limits up to their maxima, health checks and the top-level keys. Some put two
tenants in one namespace, spelled differently: check must refuse exactly those whose
listeners would collide. For each document check accepts, the daemon runs in the sandbox:
every listener must be bound, and a curl through each tenant must get the upstream's answer,
carrying that tenant's name. Limits and timeouts stay above what one curl request needs (a
max_headers of 1 is valid, and rightly answers curl's three headers with 431: that is not a
failure to serve).

Counts: NSPROXY_HYPOTHESIS_PROFILE (see config_strategies); about 30 s by default.
"""

from __future__ import annotations

import subprocess

from config_strategies import examples
from conftest import ADDR, NSPROXY, headers_of
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

NAMESPACES = ("ta", "tb", "tc")
UPSTREAM = "127.0.0.1:9630"
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", fullmatch=True)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


def spellings(ns: str):
    return st.sampled_from(
        [ns, f"/run/netns/{ns}", f"/run/netns/./{ns}", f"//run/netns/{ns}", f"/var/run/netns/{ns}"]
    )


@st.composite
def tenant(draw, ns: str, name: str):
    ports = draw(st.lists(st.integers(1, 65535) | st.sampled_from([80, 8080]), min_size=1,
                          max_size=3, unique=True))  # fmt: skip
    listeners = [
        {"listen": f"{draw(st.sampled_from([ADDR, '0.0.0.0']))}:{port}", "protocol": "http"}
        for port in ports
    ]
    if draw(st.booleans()):
        listeners.append({"listen": f"[{draw(st.sampled_from(['::1', '::']))}]:{ports[0]}",
                          "protocol": "http"})  # fmt: skip
    up = draw(names)
    health = draw(
        st.none()
        | st.fixed_dictionaries(
            {"type": st.just("tcp")},
            optional={"interval": st.floats(2, 3600), "timeout": st.floats(0.1, 1),
                      "rise": st.integers(1, 100), "fall": st.integers(1, 100)},
        )
        | st.fixed_dictionaries(
            {"type": st.just("http")},
            optional={"path": st.from_regex(r"/[!-~]{0,30}", fullmatch=True),
                      "host": labels, "expect_status": st.integers(100, 599) | st.just("3xx")},
        )
    )  # fmt: skip
    host = draw(st.sampled_from(["*", "*.example", "a.example"]))
    routes = [{"host": "*", "path_prefix": "/", "upstream": up}]
    if host != "*":
        prefix = draw(st.from_regex(r"/[!-~]{0,20}", fullmatch=True))
        routes.append({"host": host, "path_prefix": prefix, "upstream": up})
    return {
        "name": name,
        "netns": draw(spellings(ns)),
        "listeners": listeners,
        "routes": routes,
        "upstreams": {up: {"netns": None, "servers": [UPSTREAM], "health_check": health}},
    }


@st.composite
def documents(draw):
    count = draw(st.integers(1, len(NAMESPACES)))
    tenant_names = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    # Sometimes two tenants share a namespace (spelled differently): check must then refuse
    # what would collide, and accept (and the daemon serve) what would not.
    spaces = draw(st.lists(st.sampled_from(NAMESPACES), min_size=count, max_size=count))
    tenants = [(ns, draw(tenant(ns, n))) for ns, n in zip(spaces, tenant_names)]
    room = 107 - len("/run/nsproxy/")
    top = {
        "instance": draw(names),
        "admin_socket": draw(st.sampled_from(
            ["/run/nsproxy/t.sock", "/run/nsproxy/" + "s" * room, "/run/a/b/c/admin.sock"])),
        "workers": draw(st.integers(1, 256) | st.just("auto")),
        "user": draw(st.sampled_from([None, "nobody", "65534"])),
        "log": {"format": draw(st.sampled_from(["text", "json"]))},
        "limits": draw(st.fixed_dictionaries({}, optional={
            "max_header_bytes": st.integers(1024, 1048576),
            "max_headers": st.integers(10, 10000),
            "max_response_header_bytes": st.integers(1024, 1048576),
            "max_response_headers": st.integers(10, 10000),
            "max_body_bytes": st.none() | st.integers(1, 2**53 - 1),
            "max_connections": st.none() | st.integers(10, 10_000_000),
            "max_connections_per_tenant": st.integers(2, 10_000_000),
        })),
        "timeouts": draw(st.fixed_dictionaries({}, optional={
            "connect": st.floats(1, 600),
            "header_read": st.floats(1, 3600),
            "response_head": st.floats(1, 3600),
            "read": st.floats(1, 86400),
            "idle": st.floats(1, 86400),
            "drain": st.floats(0.1, 3600),
        })),
    }  # fmt: skip
    return tenants, top


@settings(
    max_examples=examples(6),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(doc=documents())
def test_a_document_check_accepts_starts_and_serves(proxy, doc):
    placed, top = doc
    tenants = [spec for _, spec in placed]
    if not getattr(proxy, "prepared", False):
        proxy.add_netns(*NAMESPACES)
        proxy.start_echo("echo", UPSTREAM)
        proxy.prepared = True
    proxy.socket = top["admin_socket"]
    proxy.write_config(tenants, **top)
    check = subprocess.run([NSPROXY, "check", str(proxy.config_path)], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert check.returncode in (0, 1) and "Traceback" not in check.stdout + check.stderr
    if check.returncode == 1:  # refused: only listeners that would collide may be the reason
        assert all("duplicate listener" in line for line in check.stdout.splitlines()), check
        reject()
    try:
        proxy.start()  # every listener bound, or it fails with the daemon's log
        for ns, spec in placed:
            listen = spec["listeners"][0]["listen"]
            port = listen.rsplit(":", 1)[1]
            answer = proxy.get_json(ns, f"http://{ADDR}:{port}/", "-H", "Host: a.example")
            assert answer["server"] == f"echo@{UPSTREAM.rsplit(':', 1)[1]}"
            assert headers_of(answer)["x-nsproxy-tenant"] == [spec["name"]]
    finally:
        assert proxy.stop() == 0, proxy.log()
        proxy.proc = None
