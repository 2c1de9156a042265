"""Transports for jobs: bytes on a wire (an MLLP client, a syslog client), no rules.

httpx logs every request it makes at INFO, its URL whole: a QIDO-RS search of another
network or of the regional core by NHS number or hospital number would write that
number to netpacs's log (INFO is its default level). Patient data belongs in the audit
trail, so httpx is heard from here at WARNING and above only.
"""

import logging

logging.getLogger("httpx").setLevel(logging.WARNING)
