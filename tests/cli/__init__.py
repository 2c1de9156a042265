"""Tests of the netpacs command line (run as a subprocess) and the maintenance service."""
