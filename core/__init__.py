"""The bottom of the stack: words, errors and time conventions every layer shares.

Nothing here imports from another prewarm package, so any layer may import it.
"""
