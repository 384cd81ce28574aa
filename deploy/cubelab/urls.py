"""Where browsers reach the hub and each team's tracking UI, with and without JupyterHub's subdomain mode.

One home for these URLs: the hub's settings (service registration), the tracking servers' environment (OAuth
redirect, accepted Host and Origin) and the hub's home page all take them from here, in every target.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def origin(url: str) -> str:
    """scheme://host[:port] of url."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def service_url(public_url: str, service: str, prefix: str, subdomains: bool) -> str:
    """The team's tracking UI: under the hub's own origin, or in subdomain mode on the service's own host
    (JupyterHub's default subdomain hook: SERVICE--service.HUBHOST; users are USER.HUBHOST), where no user's
    server shares its origin. Service names are DNS-safe already (team names: letters, digits, single hyphens)."""
    base = public_url.rstrip("/")
    if not subdomains:
        return f"{base}{prefix}"
    parts = urlsplit(base)
    return f"{parts.scheme}://{service}--service.{parts.netloc}{prefix}"


def link(url: str, hub_public_url: str) -> str:
    """url as the hub's pages and OAuth use it: a path when it shares the hub's origin (the browser stays on
    whatever host it reached the hub by), absolute when it is on a host of its own."""
    path = urlsplit(url).path
    return path if origin(url) == origin(hub_public_url) else origin(url) + path


def oauth_redirect_uri(service_url_: str, hub_public_url: str) -> str:
    """The service's OAuth callback as registered with the hub and sent by the service."""
    return link(service_url_.rstrip("/") + "/oauth_callback", hub_public_url)
