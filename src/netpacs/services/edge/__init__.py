"""The edge node of a site (issue 13): store and forward, read through, prefetch.

The edge's side works against the core through :mod:`netpacs.services.edge.ports`;
:mod:`netpacs.services.edge.clients` is the core's side (the edge nodes that may sign in).
"""
