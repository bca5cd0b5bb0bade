"""Kafka: the client code rxagent shares between the source, the sink, dead-letter
topics and state changelogs (one package per external system).

``KafkaSource`` reads topics at least once with backpressure (:mod:`.source`),
``KafkaSink`` produces events and ends them on delivery (:mod:`.sink`).
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

__all__ = [
    "CONSUMER_DEFAULTS",
    "Decoder",
    "KafkaDeadLetters",
    "KafkaPartition",
    "KafkaSink",
    "KafkaSinkError",
    "KafkaSource",
    "KeyDecoder",
    "PRODUCER_DEFAULTS",
    "kafka",
    "redact",
    "resolve_config",
]
