"""`python -m tlcache.cli`: the `tlcache` command."""

from tlcache.cli import main

main()
