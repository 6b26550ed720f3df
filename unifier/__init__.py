"""Profile Unifier: the CLI, settings and the embedded development stack."""

__version__ = "0.1.0"
