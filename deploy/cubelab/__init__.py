"""cubelab: a team MLOps platform for machine learning on Earth-system data cubes (control plane)."""

__version__ = "0.1.0"
