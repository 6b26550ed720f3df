"""The ``unifier`` command line, the embedded development stack and ops tools."""
