"""``python -m unifier``: the same as the ``unifier`` command."""

from unifier.cli import main

main()
