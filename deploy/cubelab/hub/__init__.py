"""The hub: JupyterHub configured from the platform config (login, teams as groups, team services, spawner)."""
