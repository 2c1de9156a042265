"""netpacs: a regional shared PACS for a network of NHS trusts."""

__version__ = "0.1.0"
