"""The ground floor: settings, logging, metrics helpers and the version.

Nothing here imports anything of ours; every other package may import from here.
"""
