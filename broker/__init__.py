"""Layer 2: moving step messages and run activations between processes.

RabbitMQ quorum queues in production, an in-memory twin for the embedded mode
and tests; both behind the one ``Broker`` interface. Knows nothing of workflows.
"""

from __future__ import annotations

from .base import (
    DEAD_AT_HEADER,
    DEFAULT_DELIVERY_LIMIT,
    DELIVERY_LIMIT_REASON,
    EARLIER_DELIVERIES_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    REJECTED_REASON,
    Broker,
    Consumer,
    Delivery,
    Handler,
    HeldDeadLetters,
    Outgoing,
    QueueInfo,
)
from .memory import MemoryBroker
from .messages import (
    SCHEMA_VERSION,
    Activation,
    Message,
    StepBatch,
    StepMessage,
    decode_message,
    encode_message,
)
from .rabbitmq import RabbitBroker

__all__ = [
    "DEAD_AT_HEADER",
    "DEFAULT_DELIVERY_LIMIT",
    "DELIVERY_LIMIT_REASON",
    "EARLIER_DELIVERIES_HEADER",
    "QUEUE_HEADER",
    "REASON_HEADER",
    "REJECTED_REASON",
    "SCHEMA_VERSION",
    "Activation",
    "Broker",
    "Consumer",
    "Delivery",
    "Handler",
    "HeldDeadLetters",
    "MemoryBroker",
    "Message",
    "Outgoing",
    "QueueInfo",
    "RabbitBroker",
    "StepBatch",
    "StepMessage",
    "decode_message",
    "encode_message",
]
