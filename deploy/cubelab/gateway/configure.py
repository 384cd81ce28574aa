"""Gateway settings -> dask-gateway-server traits: what `dask_gateway_config.py` applies in every target.

The plan's part (cubelab.plan.gateway_settings) says where the gateway listens, how it checks tokens and what each
team may run; the target adds where its clusters run (`backend`: the local backend's account prefix, working
folders, the environment whose dask runs them) and where the gateway keeps its database.
"""

from __future__ import annotations

from typing import Any

from cubelab.gateway.options import TeamOptions

BACKEND = "TeamLocalBackend"


def apply(c: Any, settings: dict[str, Any]) -> None:
    # Only tokens that may access the gateway's hub service get in (dask-gateway accepts any hub token otherwise).
    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = settings["hub_api_url"]
    c.JupyterHubAuthenticator.jupyterhub_api_token = settings["api_token"]
    c.JupyterHubAuthenticator.jupyterhub_service_name = settings["service_name"]
    # Its proxy serves the API and dashboards under the hub service's path, and schedulers by SNI on the TLS port.
    c.Proxy.address = settings["http_address"]
    c.Proxy.tcp_address = settings["tls_address"]
    c.Proxy.prefix = settings["prefix"]
    # The private API on its own port. Schedulers send their heartbeats there, not through the proxy, unless the
    # target says otherwise (`api_url`: the embedded stack closes the port to members' accounts).
    c.DaskGateway.address = settings["api_address"]
    backend = settings["backend"]
    # TeamLocalBackend, or a subclass of it a target names (its traits are set below all the same).
    c.DaskGateway.backend_class = backend.get("class", f"cubelab.gateway.backend.{BACKEND}")
    section = c[BACKEND]
    section.api_url = settings.get("api_url") or f"http://{settings['api_address']}/api"
    section.cluster_options = TeamOptions(settings["teams"])
    # A database on disk: a restarted gateway finds its running clusters again. It holds clusters' TLS keys,
    # encrypted with the generated key.
    section.db_url = settings["db_url"]
    section.db_encrypt_keys = [settings["db_key"]]
    section.account_prefix = backend["account_prefix"]
    section.clusters_directory = backend["clusters_dir"]
    section.inherited_environment = backend["inherited_environment"]
    # Schedulers' dashboards on loopback ports only the platform may connect to (cubelab.gateway.front admits
    # their owners); no list: no dashboards.
    section.dashboard_ports = backend.get("dashboard_ports", [])
    section.dashboard_check = backend.get("dashboard_check", "")
    c.TeamClusterConfig.scheduler_cmd = backend["scheduler_cmd"]
    c.TeamClusterConfig.worker_cmd = backend["worker_cmd"]
