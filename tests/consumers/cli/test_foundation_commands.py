"""The foundation's commands: `topics create`, `broker`, `schemas export`; what the
commands that read Kafka say when no broker answers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from support.produce import produce_corrupt_batch

from agentstream.consumers.broker import free_port
from agentstream.consumers.cli import build_parser
from agentstream.schemas.admin import wait_for_broker
from agentstream.schemas.jsonschema_export import PACKAGED_DIR
from agentstream.schemas.settings import KafkaSettings

CLI = [sys.executable, "-m", "agentstream.consumers.cli"]


async def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_topics_create_is_idempotent(kafka_bootstrap: str, unique_name: str) -> None:
    args = (
        "topics",
        "create",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic-prefix",
        unique_name,
    )
    code, out, err = await _run(*args, "--partitions", "3", "--dlq-retention-hours", "48")
    assert code == 0, err
    assert out.count("\tcreated") == 5
    code, out, err = await _run(*args, "--partitions", "3")
    assert code == 0, err
    assert out.count("\texists\n") == 5
    code, out, err = await _run(*args, "--partitions", "6")  # never changed behind one's back
    assert code == 0, err
    assert out.count("\texists with 3 partitions, not 6\n") == 5
    assert "exists with 3 partitions, not the 6 asked for: left as it is" in err

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([f"{unique_name}.events", f"{unique_name}.dlq"])
    finally:
        await admin.close()
    assert [len(t["partitions"]) for t in described] == [3, 3]


async def test_topics_create_warns_of_a_compacted_topic_made_ahead(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """Compacting a topic keyed by session keeps one event per session: an operator who made
    the events topic ahead with the wrong policy is told, with the command that fixes it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(f"{unique_name}.events", 3, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    code, out, err = await _run(
        "topics", "create", "--bootstrap-servers", kafka_bootstrap, "--topic-prefix", unique_name,
        "--partitions", "3",
    )  # fmt: skip
    assert code == 0, err
    assert f"{unique_name}.events\texists with cleanup.policy=compact, not delete\n" in out
    assert out.count("\tcreated") == 4
    assert "compaction keeps only the last record of each session" in err
    assert f"--entity-name {unique_name}.events --add-config cleanup.policy=delete" in err


async def test_topics_create_says_clearly_when_no_broker_answers() -> None:
    port = free_port()
    code, _, err = await _run(
        "topics", "create", "--bootstrap-servers", f"127.0.0.1:{port}", "--topic-prefix", "x",
        "--timeout", "2",
    )  # fmt: skip
    assert code == 2
    assert f"expected a Kafka broker answering metadata requests at 127.0.0.1:{port}" in err


@pytest.mark.parametrize(
    "command", [["tail"], ["dlq", "list"], ["dlq", "replay", "--all"], ["budget", "show"]]
)
async def test_readers_say_clearly_when_no_broker_answers(command: list[str]) -> None:
    """One line that says where no broker answered, exit 2; no traceback, no client left
    unclosed (aiokafka's start() fails half-way and leaves it to the caller), and nothing on
    stdout (`dlq list` printed its table's header, `dlq replay` "0 dead letter(s) replayed")."""
    port = free_port()
    code, out, err = await _run(*command, "--bootstrap-servers", f"127.0.0.1:{port}")
    assert code == 2 and out == "", out + err
    assert f"agentstream: expected a Kafka broker at 127.0.0.1:{port}" in err or (
        f"agentstream: expected a Kafka broker answering metadata requests at 127.0.0.1:{port}"
        in err
    ), err
    assert "Traceback" not in err and "Unclosed" not in err, err


@pytest.mark.parametrize(
    "command",
    [["topics", "create", "--partitions", "0"], ["broker", "--port", "0", "--create-topics",
                                                  "--partitions", "0"]],
)  # fmt: skip
async def test_an_impossible_partition_count_is_refused_before_any_broker(
    command: list[str],
) -> None:
    port = free_port()  # nothing listens: the error must come before a connection attempt
    env = {"AGENTSTREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
    code, out, err = await _run(*command, env=env)
    assert code == 2, err
    assert "argument --partitions: expected an integer > 0, got '0'" in err, err
    assert out == ""


async def test_replay_to_a_topic_kafka_would_refuse_is_a_usage_error() -> None:
    code, _, err = await _run("replay", "some-session", "--to-topic", "bad topic!")
    assert code == 2, err
    assert (
        "argument --to-topic: expected a topic name of ASCII letters, digits, '.', '_' and '-' "
        "(not '.' or '..'), got 'bad topic!'" in err
    ), err


async def test_the_message_names_the_security_protocol_when_it_is_not_plaintext() -> None:
    """A TLS client in front of a plaintext listener (or the other way round) only shows as a
    broker that does not answer: the message says which protocol was tried."""
    port = free_port()
    code, _, err = await _run(
        "tail", "--bootstrap-servers", f"127.0.0.1:{port}",
        env={"AGENTSTREAM_SECURITY_PROTOCOL": "SSL"},
    )  # fmt: skip
    assert code == 2, err
    assert f"agentstream: expected a Kafka broker at 127.0.0.1:{port} over SSL" in err, err


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (  # named by the option given, not by a variable set nowhere
            ["consume", "metrics", "--agent-label-limit", "-1"],
            {},
            "invalid settings: "
            "agent_label_limit (--agent-label-limit): expected greater than or equal to 0, got -1",
        ),
        (
            ["consume", "loops", "--max-calls", "-1"],
            {},
            "invalid settings: "
            "loop_max_calls (--max-calls): expected greater than or equal to 0, got -1",
        ),
        (  # a traceback (pydantic-settings' SettingsError)
            ["consume", "loops"],
            {"AGENTSTREAM_LOOP_AGENTS": "{bad"},
            "invalid settings: "
            "loop_agents (AGENTSTREAM_LOOP_AGENTS): expected JSON (a mapping or a list), got "
            "text that is not",
        ),
        (  # Kafka's 32-bit fields: it failed inside aiokafka once running
            ["tail"],
            {"AGENTSTREAM_FETCH_MAX_WAIT_MS": "99999999999"},
            "invalid settings: "
            "fetch_max_wait_ms (AGENTSTREAM_FETCH_MAX_WAIT_MS): expected less than or equal "
            "to 2147483647, got '99999999999'",
        ),
        (
            ["tail"],
            {"AGENTSTREAM_SECURITY_PROTOCOL": "ssl"},
            "invalid settings: "
            "security_protocol (AGENTSTREAM_SECURITY_PROTOCOL): expected 'PLAINTEXT', 'SSL', "
            "'SASL_PLAINTEXT' or 'SASL_SSL', got 'ssl'",
        ),
        (  # it ran, then failed at the end without its summary, leaving DIR.tmp behind
            ["demo", "--manifest", "/tmp"],
            {},
            "expected --manifest to name a file, got /tmp: a directory",
        ),
        (  # a random one was used instead
            ["demo", "--run-id", ""],
            {},
            "expected --run-id to be a prefix of session ids, got ''",
        ),
        (  # --json was ignored
            ["replay", "s-1", "--json", "--to-topic", "t"],
            {},
            "expected --json (show the timeline) or --to-topic (publish it), got both",
        ),
        (  # --all was dropped without a word
            ["dlq", "replay", "--all", "--offset", "0:0"],
            {},
            "expected --offset PARTITION:OFFSET or --all, got both",
        ),
        (  # a key without its certificate was ignored without a word
            ["tail"],
            {"AGENTSTREAM_SECURITY_PROTOCOL": "SSL", "AGENTSTREAM_SSL_KEYFILE": "/no/key.pem"},
            "expected ssl_certfile (AGENTSTREAM_SSL_CERTFILE) with ssl_keyfile "
            "(AGENTSTREAM_SSL_KEYFILE), got a key file alone: '/no/key.pem'",
        ),
        (
            ["consume", "tracing", "--bootstrap-servers", "127.0.0.1:1"],
            {"AGENTSTREAM_OTLP_CLIENT_KEY": "/no/key.pem"},
            "OTLP TLS: expected a client certificate (AGENTSTREAM_OTLP_CLIENT_CERTIFICATE or "
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE) with the client key '/no/key.pem'",
        ),
        (  # the port was blamed
            ["consume", "metrics", "--http-host", "999.1.1.1", "--bootstrap-servers", "h:1"],
            {},
            "expected an address to serve HTTP on (http_host / --http-host), got '999.1.1.1': ",
        ),
    ],
)
async def test_a_wrong_setting_or_option_is_one_line_before_anything_runs(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    """One line naming what was expected, what came and where, exit 2: never a traceback,
    nor a failure later, once running."""
    code, _, err = await _run(*args, env=env)
    assert code == 2, err
    assert err.startswith(f"agentstream: {expected}"), err
    assert err.count("\n") == 1, err


async def test_broker_command_runs_in_the_foreground_and_stops_on_sigterm() -> None:
    port = free_port()
    with subprocess.Popen(
        [*CLI, "broker", "--port", str(port), "--create-topics", "--partitions", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        await _check_broker_process(process, port)
        assert process.stderr is not None
        err = process.stderr.read()
    # Waiting for its own broker to start is no error: no client errors, no waiting notice.
    assert "ERROR" not in err and "no Kafka broker answers" not in err, err


async def test_broker_command_ends_when_its_broker_dies() -> None:
    """Before, it stayed up with a dead broker beneath it (a zombie child): whatever watched
    the command saw it running."""
    port = free_port()
    with subprocess.Popen(
        [*CLI, "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        ready = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        assert "embedded broker ready" in ready
        tansu = [
            int(pid)
            for pid in subprocess.run(
                ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
        ]
        assert len(tansu) == 1
        os.kill(tansu[0], signal.SIGKILL)
        try:
            code = await asyncio.to_thread(process.wait, 30)
        finally:
            if process.poll() is None:  # still up: the failure this test is about
                process.kill()
        err = process.stderr.read()
    assert code == 1
    assert f"the embedded broker (pid {tansu[0]}) exited with code -9" in err


async def test_broker_command_on_a_taken_port_says_so_at_once() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await asyncio.wait_for(_run("broker", "--port", str(port)), 20)
    assert code == 2 and out == "", err
    assert err == (
        f"agentstream: expected a free port for the embedded broker, but 127.0.0.1:{port} is "
        "taken (Address already in use); choose another port\n"
    )


async def _check_broker_process(process: subprocess.Popen[str], port: int) -> None:
    try:
        await wait_for_broker({"bootstrap_servers": f"127.0.0.1:{port}"}, timeout=30)
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        assert f"ready at 127.0.0.1:{port}" in line
        topics_line = await asyncio.to_thread(process.stdout.readline)
        assert "agentstream.events (created)" in topics_line
        children = _children(process.pid)
        assert children, "the broker runs as a child process"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
        for child in children:
            assert not _alive(child), "the broker process was left behind"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def test_schemas_export_check(tmp_path: Path) -> None:
    assert (await _run("schemas", "export", "--check", "--out", str(PACKAGED_DIR)))[0] == 0
    code, out, _ = await _run("schemas", "export", "--check", "--out", str(tmp_path))
    assert code == 1 and "stale:" in out
    code, out, _ = await _run("schemas", "export", "--out", str(tmp_path))
    assert code == 0 and "wrote" in out
    assert (await _run("schemas", "export", "--check", "--out", str(tmp_path)))[0] == 0
    # not FileExistsError, not 51 "stale:" lines for a directory that is not there
    code, out, err = await _run("schemas", "export", "--out", str(tmp_path / "envelope.json"))
    assert (code, out) == (2, "") and "expected --out to be a directory, got the file" in err
    code, out, err = await _run("schemas", "export", "--check", "--out", str(tmp_path / "no"))
    assert (code, out) == (2, "") and "expected the exported schemas in" in err


async def test_a_path_that_cannot_be_written_is_one_clear_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    code, _, err = await _run("up", "--log-dir", str(taken / "logs"))  # cannot be made
    assert code == 1
    assert (
        err.strip()
        == f"agentstream: NotADirectoryError: [Errno 20] Not a directory: '{taken}/logs'"
    )
    code, _, err = await _run("up", "--log-dir", str(taken))  # a file: a setting to fix
    assert code == 2
    assert err.strip() == f"agentstream: expected --log-dir to be a directory, got the file {taken}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo", "--duration", "-5"], "argument --duration: expected a number > 0, got '-5'"),
        (["up", "--drain-timeout", "-1"], "argument --drain-timeout: expected a number >= 0"),
        (["up", "--duration", "nan"], "argument --duration: expected a number > 0, got 'nan'"),
        (["tail", "--limit", "0"], "argument --limit: expected an integer > 0, got '0'"),
        (["sessions", "--limit", "-3"], "argument --limit: expected an integer > 0, got '-3'"),
        (["topics", "create", "--timeout", "0"], "argument --timeout: expected a number > 0"),
        # these ended in an overflow deep inside (a traceback, or a hang in aiokafka's fetcher)
        (["sessions", "--limit", "1" + "0" * 20], "--limit: expected an integer > 0 up to 2147"),
        (["up", "--rate", "inf"], "argument --rate: expected a number > 0 up to 2147483647"),
        (["demo", "--rate", "nan"], "argument --rate: expected a number > 0, got 'nan'"),
        (["broker", "--port", "99999"], "argument --port: expected a port from 0 to 65535"),
        (["broker", "--partitions", "0"], "argument --partitions: expected an integer > 0"),
        (["topics", "create", "--events-retention-hours", "nan"], "expected hours > 0 up to"),
        (["topics", "create", "--dlq-retention-hours", "-5"], "or -1 (kept forever), got '-5'"),
        (["dlq", "show", "0:" + "9" * 20], "expected PARTITION:OFFSET as `dlq list` prints"),
        (["dlq", "replay", "--offset", "9" * 12 + ":1"], "expected PARTITION:OFFSET"),
        # matched no scope: "no budget state matches", as if there were none that day
        (["budget", "show", "--day", "5/12/2026"], "--day: expected a day as YYYY-MM-DD"),
    ],
)
def test_counts_and_durations_out_of_range_are_usage_errors(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, `sessions --limit -3` printed every session (SQLite's LIMIT -3 is none) and
    `demo --duration -5` ran the demo."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


async def test_a_misspelt_variable_is_named_and_other_services_variables_are_not() -> None:
    env = {
        "AGENTSTREAM_BOOTSTRAP_SERVER": "kafka:9092",
        "AGENTSTREAM_STORE": "sqlite:///x.db",  # persistence's, in an environment shared by all
        "AGENTSTREAM_OTLP_ENDPOINT": "http://collector:4318/v1/traces",  # tracing's
    }
    code, _, err = await _run("schemas", "export", "--check", "--out", str(PACKAGED_DIR), env=env)
    assert code == 0, err
    warnings = [line.split(" ", 2)[2] for line in err.splitlines()]
    assert warnings == [
        "WARNING agentstream.settings: AGENTSTREAM_BOOTSTRAP_SERVER is set, but no agentstream "
        "setting reads it (did you mean AGENTSTREAM_BOOTSTRAP_SERVERS?)"
    ], err


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (
            "crc",  # found where tail looks for the end of the partition
            "agentstream: Kafka: CorruptRecordException: Invalid CRC - "
            "TopicPartition(topic='{topic}', partition=0)",
        ),
        (
            "header_name",  # a UnicodeDecodeError from aiokafka's parser: a traceback before
            "agentstream: Kafka: CorruptRecordException: a record the client cannot parse: "
            "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 0",
        ),
    ],
)
async def test_a_batch_tail_cannot_read_is_one_line_not_a_traceback(
    kafka_settings: KafkaSettings, broker_kind: str, damage: str, said: str
) -> None:
    if broker_kind != "embedded" and damage == "crc":
        pytest.skip("Apache Kafka refuses a batch with a wrong CRC: it cannot be built there")
    topic = kafka_settings.routing().events
    await produce_corrupt_batch(kafka_settings, topic, 0, damage=damage)
    code, _, err = await _run(
        "tail",
        "--from-beginning",
        "--no-follow",
        "--bootstrap-servers",
        kafka_settings.bootstrap_servers,
        "--topic-prefix",
        kafka_settings.topic_prefix,
    )
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(said.format(topic=topic)), last
    assert "Traceback" not in err
