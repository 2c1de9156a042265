"""Transports for jobs: bytes on a wire (an MLLP client, a syslog client), no rules."""
