"""agentstream's producer side, for code inside agent pods: the EventBus and AuditEmitter
APIs of the seed runtimes, shipping every event to Kafka. Imports only ``schemas``."""
