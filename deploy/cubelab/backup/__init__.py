"""Backups of a deployment: content-addressed objects and snapshots (repository), dumps and copies (engine)."""
