"""The hub's authenticator, set from the rendered settings (cubelab.hub.render.auth_settings): one function for
the embedded hub, compose's hub and zero-to-jupyterhub's hub, so every target runs the authenticator the
platform config names (z2jh's own default, `dummy`, lets anyone in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def configure_authenticator(c: Any, settings: dict[str, Any]) -> None:
    c.JupyterHub.authenticator_class = settings["authenticator_class"]
    if "allowed_users" in settings:
        c.Authenticator.allowed_users = set(settings["allowed_users"])
    if "passwords_file" in settings:
        c.LocalPasswordAuthenticator.passwords_file = settings["passwords_file"]
    oidc = settings.get("oidc")
    if not oidc:
        return
    c.GenericOAuthenticator.client_id = oidc["client_id"]
    c.GenericOAuthenticator.client_secret = Path(oidc["client_secret_file"]).read_text().strip()
    c.GenericOAuthenticator.authorize_url = oidc["authorize_url"]
    c.GenericOAuthenticator.token_url = oidc["token_url"]
    c.GenericOAuthenticator.userdata_url = oidc["userdata_url"]
    c.GenericOAuthenticator.username_claim = oidc["username_claim"]
    c.GenericOAuthenticator.scope = oidc["scope"]
    c.GenericOAuthenticator.oauth_callback_url = oidc["callback_url"]
    # Groups claim -> hub groups, synced at each login; teams are the groups named like a team.
    c.GenericOAuthenticator.manage_groups = True
    c.GenericOAuthenticator.auth_state_groups_key = f"oauth_user.{oidc['groups_claim']}"
    c.GenericOAuthenticator.allow_all = True  # users in no team may log in; they reach no team's data
