"""Command groups of the ``davserver`` CLI, one module per area.

Each module has ``register(commands)``, adding its sub-commands to the top-level parser; a
command's function takes the parsed arguments and returns the exit status. Domain errors raised
inside a command become a one-line message and exit status 1 (``davserver.cli.main``).
"""
