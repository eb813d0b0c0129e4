"""`python -m flows.cli`: the same as the `prewarm` entry point."""

from flows.cli import main

main()
