"""Orders (HL7 ORM/OMI), the Modality Worklist answered from them, and MPPS."""

from netpacs.services.orders.model import (
    OrderControl,
    OrderEvent,
    OrderStatus,
    Priority,
    modality_of_procedure,
)
from netpacs.services.orders.service import OrderService

__all__ = [
    "OrderControl",
    "OrderEvent",
    "OrderService",
    "OrderStatus",
    "Priority",
    "modality_of_procedure",
]
