"""Simulation: replaying traces against provisioning policies, offline.

The layer above provisioning and models: it trains models and calls the planner to measure
policies on a trace minute by minute (`simulation.replay`, `prewarm replay`) and replays
the soak's minutes with the live loop's decisions on an ideal runtime (`simulation.soak`).
It may import provisioning, models, warehouse and core; flows may import it; nothing below
it does.
"""
