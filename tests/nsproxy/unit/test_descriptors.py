"""descriptors.py: what a configuration needs in file descriptors, counted as the code makes
them, against the limit ``nsproxy run`` will have."""

from __future__ import annotations

import json
import resource

from nsproxy import admission, config, descriptors


def parse(**top) -> config.Config:
    tenants = [
        {
            "name": name,
            "netns": name,
            "listeners": [{"listen": f"10.0.0.250:{80 + i}", "protocol": "http"} for i in range(3)],
            "routes": [{"host": "*", "path_prefix": "/", "upstream": "u"}],
            "upstreams": {"u": {"netns": upstream, "servers": ["10.0.0.5:80"]}},
        }
        for name, upstream in (("a", None), ("b", "shared"))
    ]
    return config.parse(json.dumps({"tenants": tenants, **top}).encode())


def test_the_count_follows_listeners_workers_namespaces_and_the_metrics_socket():
    need = descriptors.needs(parse(workers=4, metrics={"listen": "127.0.0.1:9108"}))
    # 6 listeners x 4 workers, the metrics socket; a channel and a pidfd per worker, for the
    # old and the new ones while they are replaced; two per namespace (a, b, shared); the
    # reserved ones.
    assert need["listening"] == 6 * 4 + 1
    assert need["binder"] == 25 + 2 * 2 * 4 + 2 * 3 + admission.RESERVED_FDS
    # A worker: the binder's table, its stock for one upstream namespace (2 families x 10),
    # and 16 connections.
    assert need["worker"] == need["binder"] + 2 * 10 + 2 * descriptors.MIN_CONNECTIONS


def test_the_limit_is_the_hard_one_the_daemon_raises_its_soft_limit_to():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 64), hard))
        assert descriptors.limit() == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_problem_names_the_numbers_only_when_the_limit_is_passed():
    cfg = parse(workers=2)
    need = descriptors.needs(cfg)["worker"]
    assert descriptors.problem(cfg, need) is None
    line = descriptors.problem(cfg, need - 1)
    assert line.startswith(f"workers: this configuration needs {need} file descriptors")
    assert "6 listeners x 2 workers = 12 listening sockets," in line
    assert f"RLIMIT_NOFILE is {need - 1}" in line
