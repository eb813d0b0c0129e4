"""Prefect flows, deployments, settings and the `prewarm` CLI: the composition root."""
