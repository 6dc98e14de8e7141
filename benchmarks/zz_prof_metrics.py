import asyncio, sys, time, uuid
from _common import embedded_broker, like_a_service_process, produce
from bench_metrics import fleet_events, service_rate
from agentstream.consumers.metrics.settings import MetricsSettings
from agentstream.schemas.admin import TopicSpec, ensure_topics
async def main(n):
    events = fleet_events(n)
    async with embedded_broker() as broker:
        settings = MetricsSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"b{uuid.uuid4().hex[:6]}")
        await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))
        await produce(settings, events)
        print("produced", flush=True)
        open("/tmp/prof/go", "w").close()
        r = await service_rate(settings, n)
        print("rate", r, flush=True)
like_a_service_process()
asyncio.run(main(int(sys.argv[1])))
