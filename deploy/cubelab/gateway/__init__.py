"""Dask clusters for every team: dask-gateway as a hub service, with cubelab's team options and local backend.

`dask_gateway_config.py` is what dask-gateway-server loads; it maps the plan's settings (cubelab.plan.gateway_settings)
to traits with `configure.apply`. `options` turns a member's teams into the cluster options they may choose;
`backend` runs clusters as the member's own account and enforces the per-user limits dask-gateway lacks.
`kubernetes` is the Helm chart's side: the same options, clusters as pods of the team's image and Secret.
"""
