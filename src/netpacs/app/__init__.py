"""The composition root: settings, the services of each process role, the process tree, the CLI.

Only the modules of this package read :class:`~netpacs.app.settings.Settings`; everything
below receives its collaborators as arguments (ARCHITECTURE.md, layers).
"""
