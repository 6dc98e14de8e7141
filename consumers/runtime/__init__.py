"""The consumer runtime every agentstream service stands on.

:class:`EventConsumer` gives the in-pod bus's subscription model (exact types, globs, ``*``)
on a Kafka consumer group, with at-least-once delivery, retries, dead letters, rebalance
hooks and backpressure. :class:`ServiceSpec` describes a service to ``agentstream consume``.
"""

from agentstream.schemas.errors import BatchDeadLetter

from .consumer import EventConsumer
from .deadletter import ERROR_PREFIX, REPLAYED_FROM
from .dispatch import HandlerTimeoutError
from .record import Record
from .settings import HttpPort, ServiceSettings
from .spec import ServiceSpec
from .subscriptions import BatchHandler, Handler, PartitionsCallback

__all__ = [
    "ERROR_PREFIX",
    "REPLAYED_FROM",
    "BatchDeadLetter",
    "BatchHandler",
    "EventConsumer",
    "Handler",
    "HandlerTimeoutError",
    "HttpPort",
    "PartitionsCallback",
    "Record",
    "ServiceSettings",
    "ServiceSpec",
]
