"""The runtime's metrics: nothing keeps a dropped consumer alive."""

from __future__ import annotations

import gc
import weakref

from prometheus_client import CollectorRegistry

from agentstream.consumers.runtime import EventConsumer, ServiceSettings


def test_a_dropped_consumer_and_its_registry_are_freed() -> None:
    """The lag collector held each consumer's lag method: every consumer ever built stayed
    alive with its registry (a value of the registry's own weak-keyed entry) and its client."""
    consumer = EventConsumer(ServiceSettings(), service="gone")
    consumer_ref, registry_ref = weakref.ref(consumer), weakref.ref(consumer.registry)
    del consumer
    gc.collect()
    assert consumer_ref() is None and registry_ref() is None


def test_consumers_sharing_a_registry_report_lag_while_alive() -> None:
    registry = CollectorRegistry()
    kept = EventConsumer(ServiceSettings(), service="kept", registry=registry)
    dropped = EventConsumer(ServiceSettings(), service="dropped", registry=registry)
    dropped_ref = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert dropped_ref() is None
    assert [f.name for f in registry.collect() if f.name == "agentstream_consumer_lag"] == [
        "agentstream_consumer_lag"
    ]  # the collector still scrapes, for the consumer left
    assert kept.service == "kept"
