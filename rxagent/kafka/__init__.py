"""Kafka: the client code rxagent shares between the source, the sink, dead-letter
topics and state changelogs (one package per external system).

``KafkaSource`` reads topics at least once with backpressure (:mod:`.source`), or
exactly once into Kafka sinks with ``processing_guarantee="exactly_once"``
(:mod:`.transaction`),
``KafkaSink`` produces events and ends them on delivery (:mod:`.sink`),
``state_view`` reads the whole state of a partitioned durable store from its
changelog topic, whatever the number of workers (:mod:`.view`).
"""

from .common import (
    CONSUMER_DEFAULTS,
    Decoder,
    KafkaPartition,
    KeyDecoder,
    redact,
    resolve_config,
)
from .sink import PRODUCER_DEFAULTS, KafkaDeadLetters, KafkaSink, KafkaSinkError
from .source import KafkaSource, kafka
from .transaction import KafkaTransactions, TransactionError
from .view import StateView, state_view

__all__ = [
    "CONSUMER_DEFAULTS",
    "Decoder",
    "KafkaDeadLetters",
    "KafkaPartition",
    "KafkaSink",
    "KafkaSinkError",
    "KafkaSource",
    "KafkaTransactions",
    "KeyDecoder",
    "PRODUCER_DEFAULTS",
    "StateView",
    "TransactionError",
    "kafka",
    "redact",
    "resolve_config",
    "state_view",
]
