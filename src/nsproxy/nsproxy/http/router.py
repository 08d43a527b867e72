"""A tenant's HTTP routes compiled for matching: Host, then the longest path prefix."""

from __future__ import annotations


class Router:
    """A tenant's routes: exact host, then the longest ``*.domain``, then ``*``; within a host,
    the longest path prefix. Host names are compared without port and case."""

    __slots__ = ("exact", "root", "star", "wild")

    def __init__(self, routes):
        exact: dict = {}
        wild: dict = {}
        star = []
        for r in routes:
            entry = (r.path_prefix.encode(), r.upstream)
            if r.host == "*":
                star.append(entry)
            elif r.host.startswith("*."):
                wild.setdefault(r.host[1:].encode(), []).append(entry)
            else:
                exact.setdefault(r.host.encode(), []).append(entry)
        for entries in (*exact.values(), *wild.values(), star):
            entries.sort(key=lambda e: -len(e[0]))
        self.exact = exact or None
        self.wild = sorted(wild.items(), key=lambda kv: -len(kv[0])) or None
        self.star = star or None
        # The common table of one route, any host, every path: its upstream, known at once.
        only_root = not exact and not wild and len(star) == 1 and star[0][0] == b"/"
        self.root = star[0][1] if only_root else None

    def match(self, host: bytes, path: bytes):
        """The upstream name for this Host header value and path, or None."""
        if self.exact is not None or self.wild is not None:
            host = host.lower()
            if host[:1] == b"[":
                host = host.split(b"]", 1)[0] + b"]"
            elif b":" in host:
                host = host.split(b":", 1)[0]
            if host[-1:] == b".":
                host = host[:-1]
            if self.exact is not None:
                entries = self.exact.get(host)
                if entries is not None:
                    for prefix, upstream in entries:
                        if path.startswith(prefix):
                            return upstream
            if self.wild is not None:
                for suffix, entries in self.wild:
                    if host.endswith(suffix) and len(host) > len(suffix):
                        for prefix, upstream in entries:
                            if path.startswith(prefix):
                                return upstream
        if self.star is not None:
            for prefix, upstream in self.star:
                if path.startswith(prefix):
                    return upstream
        return None
