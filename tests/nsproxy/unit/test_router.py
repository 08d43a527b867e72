"""Route selection of one tenant: host specificity first, then the longest path prefix."""

from __future__ import annotations

from nsproxy.config import Route
from nsproxy.http import Router


def router(*routes):
    return Router([Route(h, p, u) for h, p, u in routes])


def test_exact_host_beats_wildcard_beats_star():
    r = router(("*", "/", "any"), ("*.example.com", "/", "wild"), ("api.example.com", "/", "api"))
    assert r.match(b"api.example.com", b"/") == "api"
    assert r.match(b"www.example.com", b"/") == "wild"
    assert r.match(b"a.b.example.com", b"/") == "wild"
    assert r.match(b"example.com", b"/") == "any"
    assert r.match(b"other.org", b"/") == "any"


def test_longest_path_prefix_wins_within_a_host():
    r = router(("h", "/", "root"), ("h", "/api/", "api"), ("h", "/api/v2/", "v2"))
    assert r.match(b"h", b"/api/v2/x") == "v2"
    assert r.match(b"h", b"/api/v1") == "api"
    assert r.match(b"h", b"/api") == "root"


def test_host_falls_through_to_less_specific_hosts_when_no_path_matches():
    r = router(("h.example", "/admin/", "admin"), ("*", "/", "any"))
    assert r.match(b"h.example", b"/admin/x") == "admin"
    assert r.match(b"h.example", b"/public") == "any"


def test_port_case_and_trailing_dot_are_ignored():
    r = router(("api.example", "/", "api"))
    assert r.match(b"API.Example:8443", b"/") == "api"
    assert r.match(b"api.example.", b"/") == "api"


def test_longest_wildcard_wins_and_no_route_means_none():
    r = router(("*.example", "/", "short"), ("*.deep.example", "/", "long"))
    assert r.match(b"x.deep.example", b"/") == "long"
    assert r.match(b"x.example", b"/") == "short"
    assert r.match(b"example", b"/") is None
    assert r.match(b"other", b"/") is None


def test_a_single_catch_all_route_is_known_without_matching():
    assert router(("*", "/", "all")).root == "all"
    # Anything more than one route for every host and path is matched request by request.
    assert router(("*", "/api/", "api")).root is None
    assert router(("*", "/", "all"), ("*", "/api/", "api")).root is None
    assert router(("*", "/", "all"), ("h.example", "/", "h")).root is None
    assert router(("*", "/", "all"), ("*.example", "/", "w")).root is None
