"""Destinations beyond the pipeline's own outputs: apps that get profiles and send
their edits back (``unifier sync``; README, Destinations)."""
