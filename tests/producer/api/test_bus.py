"""EventBus: Corail's behaviour, globs, scope, shipping (with an in-memory publisher)."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import TYPE_CHECKING

import pytest

from agentstream.producer import Event, EventBus, EventType

if TYPE_CHECKING:
    from conftest import RecordingPublisher


def ev(event_type: str = EventType.TOOL_CALLED, **kwargs: object) -> Event:
    kwargs.setdefault("data", {"name": "calc", "args": {}})
    return Event(type=event_type, **kwargs)  # type: ignore[arg-type]


async def test_corail_construction_and_exact_and_wildcard_handlers() -> None:
    bus = EventBus()
    seen: list[str] = []

    async def on_tool(event: Event) -> None:
        seen.append(f"tool:{event.data['name']}")

    async def audit_log(event: Event) -> None:
        seen.append(f"all:{event.type.value}")  # type: ignore[attr-defined]

    bus.subscribe(EventType.TOOL_CALLED, on_tool)
    bus.subscribe("*", audit_log)
    await bus.emit(
        Event(type=EventType.TOOL_CALLED, agent_id="my-agent", data={"name": "calculator"})
    )
    await bus.emit(Event(type=EventType.TOOL_RESULT, data={"name": "calculator"}))
    assert seen == ["tool:calculator", "all:tool.called", "all:tool.result"]


def test_corails_names_of_the_control_types_and_to_dict_of_any_data() -> None:
    """Corail code subscribing with EventType.AGENT_PAUSED failed at import; to_dict() raised
    for data holding an object (Corail's gives data as it is)."""
    assert EventType.AGENT_PAUSED is EventType.CONTROL_AGENT_PAUSED
    assert EventType.CONFIG_UPDATED.value == "control.config.updated"
    assert EventType.TOOLS_RELOAD_REQUESTED is EventType.CONTROL_TOOLS_RELOAD
    assert EventType.KBS_RELOAD_REQUESTED is EventType.CONTROL_KBS_RELOAD
    assert EventType.AGENT_RESUMED is EventType.CONTROL_AGENT_RESUMED
    error = ValueError("boom")
    shown = Event(type=EventType.TOOL_ERROR, data={"error": error}).to_dict()
    assert shown["data"] == {"error": error} and shown["type"] == "tool.error"
    assert isinstance(shown["timestamp"], str)


async def test_exact_then_glob_then_wildcard_order_and_duplicates() -> None:
    bus = EventBus()
    started: list[str] = []

    def make(name: str):  # type: ignore[no-untyped-def]
        async def handler(event: Event) -> None:
            started.append(name)

        return handler

    star, glob, exact, other = make("star"), make("glob"), make("exact"), make("other")
    bus.subscribe("*", star)
    bus.subscribe("tool.*", glob)
    bus.subscribe("tool.called", exact)
    bus.subscribe(EventType.TOOL_CALLED, exact)  # duplicates allowed
    bus.subscribe("llm.*", other)
    assert bus.subscriber_count == 5
    await bus.emit(ev())
    assert started == ["exact", "exact", "glob", "star"]

    bus.unsubscribe(EventType.TOOL_CALLED, exact)  # removes the first match only
    bus.unsubscribe("tool.*", other)  # not subscribed there: no-op
    assert bus.subscriber_count == 4
    started.clear()
    await bus.emit(ev())
    assert started == ["exact", "glob", "star"]


async def test_handlers_run_concurrently() -> None:
    bus = EventBus()
    a_ready, b_ready = asyncio.Event(), asyncio.Event()

    async def a(event: Event) -> None:
        a_ready.set()
        await asyncio.wait_for(b_ready.wait(), 5)

    async def b(event: Event) -> None:
        b_ready.set()
        await asyncio.wait_for(a_ready.wait(), 5)

    bus.subscribe(EventType.TOOL_CALLED, a)
    bus.subscribe("*", b)
    await bus.emit(ev())  # would time out if handlers ran one after the other
    assert a_ready.is_set() and b_ready.is_set()


async def test_failing_handler_is_logged_with_name_and_type_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    ran: list[str] = []

    async def broken_handler(event: Event) -> None:
        raise ValueError("boom")

    async def fine(event: Event) -> None:
        ran.append("fine")

    bus.subscribe("*", broken_handler)
    bus.subscribe("*", fine)
    with caplog.at_level(logging.ERROR, logger="agentstream.producer.bus"):
        await bus.emit(ev())
    assert ran == ["fine"]
    assert bus.handler_errors == 1
    message = caplog.records[-1].getMessage()
    assert "broken_handler" in message and "tool.called" in message and "boom" in message


async def test_a_handler_that_meets_a_cancellation_is_a_handler_error() -> None:
    """A handler awaiting a future cancelled elsewhere raised CancelledError out of emit()
    (Corail's gather(return_exceptions=True) keeps it from the emitter)."""
    bus = EventBus()
    ran: list[str] = []

    async def waits_on_cancelled(event: Event) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    async def fine(event: Event) -> None:
        ran.append("fine")

    bus.subscribe("*", waits_on_cancelled)
    await bus.emit(ev())  # one handler: awaited in the emitter's own task
    bus.subscribe("*", fine)
    await bus.emit(ev())  # two: gathered
    assert ran == ["fine"] and bus.handler_errors == 2


async def test_cancelling_the_emitter_still_cancels_it() -> None:
    bus = EventBus()
    started = asyncio.Event()

    async def slow(event: Event) -> None:
        started.set()
        await asyncio.sleep(30)

    bus.subscribe("*", slow)
    task = asyncio.create_task(bus.emit(ev()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bus.handler_errors == 0


async def test_an_event_object_emitted_twice_is_shipped_as_two_events(
    recording: type[RecordingPublisher],
) -> None:
    """Corail's events have no id: the same object emitted twice is two events. It was shipped
    twice under one event_id, and the store kept one."""
    publisher = recording()
    bus = EventBus(publisher)
    event = ev()
    await bus.emit(event)
    await bus.emit(event)
    first, second = publisher.events
    assert first is event and second.event_id != event.event_id
    assert second.data == event.data and bus.history == [event, event]


async def test_sync_handlers_are_accepted() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe("*", seen.append)
    event = ev()
    await bus.emit(event)
    assert seen == [event]


async def test_history_newest_first_capped_and_cleared() -> None:
    bus = EventBus()
    events = [ev(data={"i": i}) for i in range(1005)]
    for event in events:
        await bus.emit(event)
    history = bus.history
    assert len(history) == 1000
    assert history[0] is events[-1] and history[-1] is events[5]
    bus.clear_history()
    assert bus.history == []


async def test_emit_records_before_handlers_and_ships_to_publisher(
    recording: type[RecordingPublisher],
) -> None:
    publisher = recording()
    bus = EventBus(publisher, agent_id="agent-1")
    seen_history: list[int] = []

    async def handler(event: Event) -> None:
        seen_history.append(len(bus.history))
        assert publisher.events[-1] is event

    bus.subscribe("*", handler)
    event = ev()
    await bus.emit(event)
    assert seen_history == [1]
    assert publisher.events == [event]
    assert event.agent_id == "agent-1"


async def test_emit_sync_keeps_task_references_and_runs_handlers(
    recording: type[RecordingPublisher],
) -> None:
    bus = EventBus(recording())
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        done.set()

    bus.subscribe("*", handler)
    bus.emit_sync(ev())
    assert len(bus._tasks) == 1  # referenced, so not garbage-collected mid-flight
    await asyncio.wait_for(done.wait(), 5)
    await bus.close()
    assert not bus._tasks


def test_emit_sync_without_a_loop_records_and_ships(
    recording: type[RecordingPublisher], caplog: pytest.LogCaptureFixture
) -> None:
    publisher = recording()
    bus = EventBus(publisher)
    called: list[Event] = []

    async def handler(event: Event) -> None:
        called.append(event)

    bus.subscribe("*", handler)
    event = ev(session_id="s1")
    with caplog.at_level(logging.WARNING, logger="agentstream.producer.bus"):
        bus.emit_sync(event)
    assert bus.history == [event]
    assert publisher.events == [event]
    assert called == []  # no loop to run a coroutine handler on
    assert bus.skipped_handler_runs == 1  # said (it was a debug line) and counted
    assert "its 1 handler(s) not run" in caplog.text


def test_a_later_event_loop_takes_over_from_a_closed_one(
    recording: type[RecordingPublisher],
) -> None:
    """The bus stayed bound to the loop of its first emit: after a second asyncio.run(), events
    emitted from other threads had their handlers dropped without a word."""
    bus = EventBus(recording())
    handled: list[str] = []
    bus.subscribe("*", lambda e: handled.append(str(e.data["n"])))

    async def run(n: int) -> None:
        await bus.emit(ev(data={"n": f"{n}-await"}))
        worker = threading.Thread(target=bus.emit_sync, args=(ev(data={"n": f"{n}-thread"}),))
        worker.start()
        worker.join()
        for _ in range(100):  # the handler runs on this loop, soon
            if f"{n}-thread" in handled:
                break
            await asyncio.sleep(0.01)
        await bus.close()

    asyncio.run(run(1))
    asyncio.run(run(2))
    assert handled == ["1-await", "1-thread", "2-await", "2-thread"]


def test_subscribing_on_one_thread_while_others_emit_never_raises_into_them(
    recording: type[RecordingPublisher],
) -> None:
    """RuntimeError('dictionary changed size during iteration') reached the emitting agent
    code: the dispatch iterated the subscriptions while subscribe() added one."""
    bus = EventBus(recording())
    errors: list[BaseException] = []
    stop = threading.Event()

    def emit(offset: int) -> None:
        n = offset
        while not stop.is_set():
            n += 1
            try:
                bus.emit_sync(ev(f"tool.t{n % 500}"))
            except BaseException as exc:
                errors.append(exc)
                return

    def subscribe() -> None:
        for n in range(3_000):
            bus.subscribe(f"x{n}.*", lambda e: None)
            if n % 3 == 0:
                bus.unsubscribe("tool.*", print)  # absent: a no-op under the same lock
        stop.set()

    threads = [threading.Thread(target=emit, args=(i * 1000,)) for i in range(3)]
    threads.append(threading.Thread(target=subscribe))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns often: inside the dispatch's loops too
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert bus.subscriber_count == 3_000


async def test_emit_sync_keeps_call_order_on_the_wire(recording: type[RecordingPublisher]) -> None:
    publisher = recording()
    bus = EventBus(publisher)
    bus.subscribe("*", lambda e: None)
    first, second = ev(session_id="s"), ev(session_id="s")
    bus.emit_sync(first)  # handlers scheduled, shipping done now
    await bus.emit(second)
    assert publisher.events == [first, second]
    await bus.close()


async def test_emit_sync_from_another_thread_runs_handlers_on_the_bus_loop(
    recording: type[RecordingPublisher],
) -> None:
    bus = EventBus(recording())
    await bus.start()
    loop = asyncio.get_running_loop()
    received = asyncio.Event()
    threads: list[int] = []

    async def handler(event: Event) -> None:
        threads.append(threading.get_ident())
        received.set()

    bus.subscribe("*", handler)
    worker = threading.Thread(target=bus.emit_sync, args=(ev(),))
    worker.start()
    worker.join()
    await asyncio.wait_for(received.wait(), 5)
    assert threads == [threading.get_ident()]
    assert asyncio.get_running_loop() is loop
    await bus.close()


async def test_publish_failure_is_isolated_and_counted(recording: type[RecordingPublisher]) -> None:
    bus = EventBus(recording(fail=True))
    seen: list[Event] = []
    bus.subscribe("*", seen.append)
    await bus.emit(ev())
    bus.emit_sync(ev())
    assert bus.publish_failures.count == 2
    assert len(bus.history) == 2
    await bus.close()


async def test_scope_stamps_empty_fields_nested_and_follows_tasks(
    recording: type[RecordingPublisher],
) -> None:
    publisher = recording()
    bus = EventBus(publisher, agent_id="default-agent")
    with bus.scope(session_id="s1", user_id="u1"):
        await bus.emit(ev())
        await bus.emit(ev(session_id="own"))  # the event's own id wins
        with bus.scope(session_id="s2", turn_id="t9"):
            await bus.emit(ev())

            async def in_task() -> None:
                await bus.emit(ev())

            await asyncio.create_task(in_task())
        await bus.emit(ev())
    await bus.emit(ev())
    got = [(e.session_id, e.user_id, e.turn_id, e.agent_id) for e in publisher.events]
    assert got == [
        ("s1", "u1", "", "default-agent"),
        ("own", "u1", "", "default-agent"),
        ("s2", "u1", "t9", "default-agent"),
        ("s2", "u1", "t9", "default-agent"),
        ("s1", "u1", "", "default-agent"),
        ("", "", "", "default-agent"),
    ]


async def test_scope_agent_id_overrides_bus_default(recording: type[RecordingPublisher]) -> None:
    publisher = recording()
    bus = EventBus(publisher, agent_id="default")
    with bus.scope(agent_id="scoped"):
        await bus.emit(ev())
    assert publisher.events[0].agent_id == "scoped"


async def test_scopes_do_not_leak_between_concurrent_tasks(
    recording: type[RecordingPublisher],
) -> None:
    publisher = recording()
    bus = EventBus(publisher)

    async def session(sid: str) -> None:
        with bus.scope(session_id=sid):
            for _ in range(20):
                await bus.emit(ev(data={"sid": sid}))
                await asyncio.sleep(0)

    await asyncio.gather(*(session(f"s{i}") for i in range(5)))
    assert all(e.session_id == e.data["sid"] for e in publisher.events)
    assert len(publisher.events) == 100


async def test_emit_local_is_never_shipped_even_when_re_emitted(
    recording: type[RecordingPublisher],
) -> None:
    publisher = recording()
    bus = EventBus(publisher, agent_id="a1")
    directive = Event(type=EventType.CONTROL_AGENT_PAUSED, agent_id="a1", data={"reason": "x"})

    async def echo(event: Event) -> None:
        await bus.emit(event)  # a careless handler re-emitting what it got

    bus.subscribe(EventType.CONTROL_AGENT_PAUSED, echo)
    await bus.emit_local(directive)
    assert publisher.events == []
    assert bus.history[0] is directive


def test_subscribe_rejects_non_string_types() -> None:
    with pytest.raises(TypeError, match="expected an EventType"):
        EventBus().subscribe(42, print)


async def test_control_addressing_by_agent_then_by_recent_session() -> None:
    from agentstream.producer import ControlListener

    bus = EventBus(agent_id="a1")
    bus.control = object()  # type: ignore[assignment]  # session tracking is on with a listener
    await bus.emit(ev(session_id="mine"))
    bus.control = None

    def directive(agent: str, session: str) -> Event:
        return Event(type=EventType.CONTROL_AGENT_PAUSED, agent_id=agent, session_id=session)

    assert ControlListener.addressed_to(bus, directive("a1", "any"))
    assert not ControlListener.addressed_to(bus, directive("a2", "mine"))  # agent id decides
    assert ControlListener.addressed_to(bus, directive("", "mine"))
    assert not ControlListener.addressed_to(bus, directive("", "other"))
    assert not ControlListener.addressed_to(bus, directive("", ""))


async def test_a_pod_naming_its_agents_in_scopes_gets_their_directives() -> None:
    """A bus without an agent_id whose requests name the agent with scope(agent_id=...) (a
    pod serving several agents): the directives for those agents never reached it."""
    from agentstream.producer import ControlListener

    bus = EventBus()
    bus.control = object()  # type: ignore[assignment]  # tracking is on with a listener
    with bus.scope(session_id="s-1", agent_id="agent-x"):
        await bus.emit(ev())
    paused = Event(type=EventType.CONTROL_AGENT_PAUSED, agent_id="agent-x", session_id="s-1")
    assert ControlListener.addressed_to(bus, paused)
    other = Event(type=EventType.CONTROL_AGENT_PAUSED, agent_id="agent-y", session_id="s-1")
    assert not ControlListener.addressed_to(bus, other)


def test_session_tracking_is_bounded() -> None:
    bus = EventBus()
    bus.control = object()  # type: ignore[assignment]
    for i in range(10_005):
        bus.emit_sync(ev(session_id=f"s{i}"))
    assert not bus.has_session("s0") and bus.has_session("s10004")
    assert len(bus._sessions) == 10_000
    # The sessions emitted in last are kept: a long session emitting now and then stays
    # (they were kept in the order first seen).
    bus.emit_sync(ev(session_id="s5"))
    for i in range(9_999):
        bus.emit_sync(ev(session_id=f"t{i}"))
    assert bus.has_session("s5") and not bus.has_session("s6")


async def test_dispatch_tables_are_bounded_and_types_past_them_still_dispatched() -> None:
    # one table per type was kept forever: a pod naming types after tools leaked ~150 B each
    bus = EventBus()
    seen: list[str] = []

    async def on_plugin(event: Event) -> None:
        seen.append(event.type)

    bus.subscribe("plugin.*", on_plugin)
    for i in range(5_000):
        await bus.emit(ev(f"plugin.p{i}"))
    assert len(bus._dispatch_cache) == 4_096
    assert len(seen) == 5_000 and seen[-1] == "plugin.p4999"
