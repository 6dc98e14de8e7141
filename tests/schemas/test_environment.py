"""unread_variables: what every command says about AGENTSTREAM_* variables no setting reads."""

from __future__ import annotations

from agentstream.schemas.environment import unread_variables


def test_variables_no_setting_reads_are_named_with_the_closest_one() -> None:
    environ = {
        "AGENTSTREAM_BOOTSTRAP_SERVER": "kafka:9092",  # the S is missing
        "agentstream_topic_prefx": "fleet",  # read case-insensitively, so checked so too
        "AGENTSTREAM_WHATEVER": "1",
        "AGENTSTREAM_BOOTSTRAP_SERVERS": "kafka:9092",
        "agentstream_linger_ms": "5",
        "AGENTSTREAM_TEST_BOOTSTRAP": "x",  # the test suite's own
        "AGENTSTREAM_REQUIRE_POSTGRES": "1",
        # Kubernetes' service links for a Service named agentstream-metrics:
        "AGENTSTREAM_METRICS_SERVICE_HOST": "10.0.0.7",
        "AGENTSTREAM_METRICS_SERVICE_PORT": "9104",
        "AGENTSTREAM_METRICS_SERVICE_PORT_HTTP": "9104",
        "AGENTSTREAM_METRICS_PORT": "tcp://10.0.0.7:9104",
        "AGENTSTREAM_METRICS_PORT_9104_TCP": "tcp://10.0.0.7:9104",
        "AGENTSTREAM_METRICS_PORT_9104_TCP_PROTO": "tcp",
        "AGENTSTREAM_METRICS_PORT_9104_TCP_PORT": "9104",
        "AGENTSTREAM_METRICS_PORT_9104_TCP_ADDR": "10.0.0.7",
        "AGENTSTREAM_CLIENT_PORT": "9104",  # only looks like one
        "PATH": "/bin",
    }
    assert unread_variables(environ) == [
        "AGENTSTREAM_BOOTSTRAP_SERVER is set, but no agentstream setting reads it "
        "(did you mean AGENTSTREAM_BOOTSTRAP_SERVERS?)",
        "AGENTSTREAM_CLIENT_PORT is set, but no agentstream setting reads it",
        "AGENTSTREAM_WHATEVER is set, but no agentstream setting reads it",
        "agentstream_topic_prefx is set, but no agentstream setting reads it "
        "(did you mean AGENTSTREAM_TOPIC_PREFIX?)",
    ]
