"""Inventory, costs, planner, composite schemas, container runtimes and the reconciler."""
