"""`python -m mmib ...`: the `mmib` command line."""

from .cli import main

main()
