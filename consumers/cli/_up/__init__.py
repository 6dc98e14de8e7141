"""``agentstream up``: the embedded broker, the topics, the five services as processes, the
demo agents and a live view, started and stopped as one unit."""
