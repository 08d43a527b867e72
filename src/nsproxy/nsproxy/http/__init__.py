"""HTTP/1.1 reverse proxy path: one room per concern.

- ``wire``: wire facts (reasons, hop-by-hop fields, the proxy's own answers, head assembly);
- ``flow``: flow control, once for both sides;
- ``request_head`` / ``response_head``: the policies for what is forwarded and how it is framed;
- ``cycle``: one request/response exchange;
- ``client`` / ``upstream_side``: the two protocols;
- ``router``: Host and path routing.
"""

from nsproxy.http.client import ClientConnection
from nsproxy.http.router import Router

__all__ = ["ClientConnection", "Router"]
