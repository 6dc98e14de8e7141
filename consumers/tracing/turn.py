"""One user turn being assembled into spans, event by event.

The root span covers the turn (Calute ``audit.turn_start`` … ``audit.turn_end``, Corail
``message.received`` … ``turn.ended``). Children:

- ``llm:<model>`` per LLM call (``llm.call.started`` → ``llm.call.completed``, paired by round);
- ``tool:<name>`` per tool call attempt (Corail ``tool.called`` → ``tool.result``/``tool.error``,
  Calute ``audit.tool_call_attempt`` → ``audit.tool_call_complete``/``audit.tool_call_failure``);
  each retry is its own span; failures have the error status. Calute's decisions around a call
  (loop check, policy, hooks, sandbox) become span events of the attempt they belong to; a call
  denied by policy or blocked as a loop is a zero-length error span;
- ``guard:<guard>`` for ``guard.blocked`` (zero-length, error); guard checks are root events;
- ``retrieval`` (``retrieval.searched`` → ``retrieval.results``), ``thinking``;
- ``plan`` (``plan.created`` → ``plan.completed``) with ``plan.step`` children by index.

Everything else of interest (budget, memory, errors, rounds) becomes an event on the root.
Reading ``data`` is tolerant: a missing or mistyped key gives a default, never an exception.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from agentstream.schemas import Event

from .ids import span_id_for, trace_id_for
from .pairing import Call, CallTable
from .spans import Attributes, AttributeValue, Span, SpanEvent, SpanKind, StatusCode, Trace

# Attribute keys. OpenTelemetry semantic conventions where one exists (session.id, user.id,
# gen_ai.*); MLflow's own keys so its UI shows span types, inputs, outputs and token usage.
SESSION_ID = "session.id"
USER_ID = "user.id"
MLFLOW_SESSION = "mlflow.trace.session"
MLFLOW_USER = "mlflow.trace.user"
MLFLOW_SPAN_TYPE = "mlflow.spanType"
MLFLOW_INPUTS = "mlflow.spanInputs"
MLFLOW_OUTPUTS = "mlflow.spanOutputs"
MLFLOW_TOKEN_USAGE = "mlflow.chat.tokenUsage"
AGENT_ID = "gen_ai.agent.id"
TURN_ID = "agentstream.turn_id"
ROUND = "agentstream.round"
STOP_REASON = "agentstream.stop_reason"
ATTEMPT = "agentstream.tool.attempt"
EVENT_ID = "agentstream.event_id"
UNPAIRED = "agentstream.unpaired"

TURN_END_TYPES = frozenset({"turn.ended", "audit.turn_end"})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_LIMIT = 2**64
MAX_ATTRIBUTE_DEPTH = 16
"""Containers nested deeper in an attribute value are kept as their JSON text."""


def _json_text(value: Any) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except RecursionError:  # deeper than the interpreter allows from here
        return "<nested too deep>"
    except Exception:  # not JSON-like (the decoder gives only JSON values): its text
        return str(value)


def time_ns(moment: datetime) -> int:
    """Unix nanoseconds of an aware datetime, exact to the microsecond, within what OTLP's
    ``fixed64`` times hold (1970 to 2554): one time outside made the export of the whole
    request fail."""
    delta = moment - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    return min(max(ns, 0), _NS_LIMIT - 1)


@dataclass(frozen=True, slots=True)
class TurnLimits:
    """Bounds on one turn's size (a misbehaving agent cannot grow the state without limit)."""

    max_spans: int = 1_000
    max_events_per_span: int = 128
    max_attribute_chars: int = 4_096


def _str(data: dict[str, Any], key: str, default: str = "") -> str:
    value = data.get(key)
    return value if isinstance(value, str) else default


def _int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _call_id(data: dict[str, Any]) -> str | None:
    value = data.get("call_id")
    return value if isinstance(value, str) and value else None


class TurnBuilder:
    """The spans of one turn. Feed events in consumption order; :meth:`finish` gives the trace."""

    def __init__(self, session_id: str, turn_key: str, first: Event, limits: TurnLimits) -> None:
        self.session_id = session_id
        self.turn_key = turn_key
        self.limits = limits
        self.trace_id = trace_id_for(session_id, turn_key)
        self.agent_id = first.agent_id
        self.source = first.source
        self.started_ns = time_ns(first.timestamp)
        self.last_ns = self.started_ns
        self.ended = False
        self.dropped_spans = 0
        self.round: int | None = None
        self._seen: dict[str, None] = {}  # event ids applied, for redeliveries (insertion order)
        self._seen_limit = 4 * limits.max_spans
        self._calls = CallTable()
        self._llm: dict[int, deque[Span]] = {}
        self._retrievals: deque[Span] = deque()
        self._thinking: deque[Span] = deque()
        self._plan: Span | None = None
        self._steps: dict[int, deque[Span]] = {}
        self._pending: dict[str, list[SpanEvent]] = {}  # Calute decisions before an attempt
        self.root = Span(
            trace_id=self.trace_id,
            span_id=span_id_for(self.trace_id, "root"),
            parent_span_id=None,
            name="turn",
            start_ns=self.started_ns,
            kind=SpanKind.SERVER,
        )
        attrs = self.root.attributes
        attrs[MLFLOW_SPAN_TYPE] = "AGENT"
        if session_id:
            attrs[SESSION_ID] = session_id
            attrs[MLFLOW_SESSION] = session_id
        if first.user_id:
            attrs[USER_ID] = first.user_id
            attrs[MLFLOW_USER] = first.user_id
        if first.agent_id:
            attrs[AGENT_ID] = first.agent_id
            attrs["mlflow.traceTag.agent_id"] = first.agent_id
        if first.turn_id:
            attrs[TURN_ID] = first.turn_id
        self.spans: list[Span] = [self.root]

    # --- feeding ----------------------------------------------------------------------------

    def add(self, event: Event) -> bool:
        """Apply one event; ``False`` when it was already applied (a redelivery)."""
        if event.event_id in self._seen:
            return False
        self._seen[event.event_id] = None
        if len(self._seen) > self._seen_limit:  # bounded: the oldest ids are forgotten
            del self._seen[next(iter(self._seen))]
        now = time_ns(event.timestamp)
        self.last_ns = max(self.last_ns, now)
        if not self.agent_id and event.agent_id:
            self.agent_id = event.agent_id
            self.root.attributes[AGENT_ID] = event.agent_id
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event, event.data if isinstance(event.data, dict) else {}, now)
        return True

    def _root_event(self, name: str, now: int, attributes: Attributes | None = None) -> None:
        self._add_event(self.root, SpanEvent(name, now, attributes or {}))

    def _add_event(self, span: Span, event: SpanEvent) -> None:
        if len(span.events) < self.limits.max_events_per_span:
            span.events.append(event)

    def _child(
        self,
        name: str,
        now: int,
        key: str,
        *,
        parent: Span | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        span_type: str | None = None,
    ) -> Span | None:
        """A new child span, or ``None`` (counted) when the turn has reached its span limit."""
        if len(self.spans) >= self.limits.max_spans:
            self.dropped_spans += 1
            return None
        span = Span(
            trace_id=self.trace_id,
            span_id=span_id_for(self.trace_id, key),
            parent_span_id=(parent or self.root).span_id,
            name=name,
            start_ns=now,
            kind=kind,
        )
        if span_type:
            span.attributes[MLFLOW_SPAN_TYPE] = span_type
        span.attributes[EVENT_ID] = key
        self.spans.append(span)
        return span

    def _value(self, value: Any, depth: int = 0) -> AttributeValue:
        """A JSON-like value for an attribute, with long strings cut to the configured size and
        containers below :data:`MAX_ATTRIBUTE_DEPTH` levels as their JSON text (a tool's
        arguments may nest as deep as the decoder allows: a recursion per level would fail)."""
        limit = self.limits.max_attribute_chars
        if isinstance(value, str):
            return value if len(value) <= limit else value[:limit] + "…"
        if isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict | list | tuple) and depth >= MAX_ATTRIBUTE_DEPTH:
            return self._value(_json_text(value))
        if isinstance(value, dict):
            return {str(k): self._value(v, depth + 1) for k, v in list(value.items())[:64]}
        if isinstance(value, list | tuple):
            return [self._value(v, depth + 1) for v in list(value)[:64]]
        if value is None:
            return ""
        return self._value(str(value))

    # --- turn boundaries --------------------------------------------------------------------

    def _on_message_received(self, event: Event, data: dict[str, Any], now: int) -> None:
        self.root.attributes[MLFLOW_INPUTS] = self._value(data.get("content", ""))

    def _on_message_response(self, event: Event, data: dict[str, Any], now: int) -> None:
        self.set_response(data)

    def set_response(self, data: dict[str, Any]) -> None:
        """The answer of the turn as the root's output (Corail sends it after ``turn.ended``:
        the assembler then hands it to the just-finished turn)."""
        self.root.attributes[MLFLOW_OUTPUTS] = self._value(data.get("content", ""))

    def _on_turn_start(self, event: Event, data: dict[str, Any], now: int) -> None:
        self.root.attributes[MLFLOW_INPUTS] = self._value(_str(data, "prompt_preview"))

    def _on_turn_end(self, event: Event, data: dict[str, Any], now: int) -> None:
        self.root.attributes[MLFLOW_OUTPUTS] = self._value(_str(data, "content_preview"))
        calls = _int(data, "function_calls_count")
        if calls is not None:
            self.root.attributes["agentstream.function_calls_count"] = calls
        # Calute names no stop reason: the turn went well unless it reported an error.
        errors = [e for e in self.root.events if e.name == "exception"]
        if errors:
            attrs = errors[-1].attributes
            self.root.fail(
                f"{attrs.get('exception.type') or 'error'}: {attrs['exception.message']}"
            )
        elif self.root.status == StatusCode.UNSET:
            self.root.status = StatusCode.OK
        self._end(now)

    def _on_round(self, event: Event, data: dict[str, Any], now: int) -> None:
        self.round = _int(data, "round")
        self._root_event("turn.started", now, {ROUND: self.round if self.round is not None else -1})

    def _on_turn_ended(self, event: Event, data: dict[str, Any], now: int) -> None:
        reason = _str(data, "stop_reason", "end_turn")
        self.root.attributes[STOP_REASON] = reason
        rounds = _int(data, "round")
        if rounds is not None:
            self.root.attributes[ROUND] = rounds
        if reason == "end_turn":
            self.root.status = StatusCode.OK
        else:
            self.root.fail(f"turn stopped: {reason}")
        self._end(now)

    def _end(self, now: int) -> None:
        self.ended = True
        self.root.finish(now)

    # --- LLM calls --------------------------------------------------------------------------

    def _on_llm_started(self, event: Event, data: dict[str, Any], now: int) -> None:
        model = _str(data, "model")
        span = self._child(
            f"llm:{model}" if model else "llm",
            now,
            event.event_id,
            kind=SpanKind.CLIENT,
            span_type="CHAT_MODEL",
        )
        if span is None:
            return
        rnd = _int(data, "round")
        span.attributes["gen_ai.operation.name"] = "chat"
        if rnd is not None:
            span.attributes[ROUND] = rnd
        if model:
            span.attributes["gen_ai.request.model"] = model
        self._llm.setdefault(rnd if rnd is not None else -1, deque()).append(span)

    def _on_llm_completed(self, event: Event, data: dict[str, Any], now: int) -> None:
        rnd = _int(data, "round")
        span = self._take_llm(rnd if rnd is not None else -1)
        if span is None:  # no start seen: a zero-length span at the completion
            model = _str(data, "model")
            span = self._child(
                f"llm:{model}" if model else "llm",
                now,
                event.event_id,
                kind=SpanKind.CLIENT,
                span_type="CHAT_MODEL",
            )
            if span is None:
                return
            span.attributes[UNPAIRED] = True
            if rnd is not None:
                span.attributes[ROUND] = rnd
        attrs = span.attributes
        stop = _str(data, "stop_reason")
        if stop:
            attrs[STOP_REASON] = stop
            attrs["gen_ai.response.finish_reasons"] = [stop]
        model = _str(data, "model")
        if model:
            if span.name == "llm":  # Corail's llm.call.started names no model
                span.name = f"llm:{model}"
            attrs["gen_ai.response.model"] = model
            attrs.setdefault("gen_ai.request.model", model)
            attrs["mlflow.llm.model"] = model
        usage: dict[str, Any] = {}
        for key, attr in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens")):
            value = _int(data, key)
            if value is not None:
                attrs[f"gen_ai.usage.{attr}"] = value
                usage[attr] = value
        if usage:
            usage["total_tokens"] = sum(usage.values())
            attrs[MLFLOW_TOKEN_USAGE] = usage
        chars = _int(data, "output_chars")
        if chars is not None:
            attrs["agentstream.output_chars"] = chars
        span.status = StatusCode.OK
        span.finish(now)

    def _take_llm(self, rnd: int) -> Span | None:
        queue = self._llm.get(rnd)
        if queue:
            return queue.popleft()
        for queue in self._llm.values():  # a completion with another round: the oldest open
            if queue:
                return queue.popleft()
        return None

    # --- tool calls -------------------------------------------------------------------------

    def _open_call(self, event: Event, name: str, args: Any, now: int) -> None:
        call_id = _call_id(event.data)
        attempt = self._calls.retry_attempt(name, call_id)
        span = self._child(
            f"tool:{name}", now, event.event_id, kind=SpanKind.INTERNAL, span_type="TOOL"
        )
        if span is None:
            return
        self._describe_tool(span, name, call_id, attempt)
        if args is not None and args != "":
            span.attributes[MLFLOW_INPUTS] = self._value(args)
        for pending in self._pending.pop(name, []):
            self._add_event(span, pending)
        self._calls.open(Call(name=name, call_id=call_id, span=span, attempt=attempt))

    def _describe_tool(self, span: Span, name: str, call_id: str | None, attempt: int) -> None:
        span.attributes["gen_ai.operation.name"] = "execute_tool"
        span.attributes["gen_ai.tool.name"] = name
        span.attributes[ATTEMPT] = attempt
        if call_id:
            span.attributes["gen_ai.tool.call.id"] = call_id
        if self.round is not None:
            span.attributes[ROUND] = self.round

    def _close_call(
        self,
        event: Event,
        name: str,
        now: int,
        *,
        error: str | None,
        output: Any = None,
        attempt: int | None = None,
    ) -> None:
        call_id = _call_id(event.data)
        call, is_retry = self._calls.match(name, call_id, attempt)
        if call is None or is_retry:
            # An outcome without an open call: the retry of a failed call (it starts where the
            # failed attempt ended), or an outcome whose opening was never seen (zero length).
            start = (call.span.end_ns or now) if call is not None else now
            span = self._child(f"tool:{name}", start, event.event_id, span_type="TOOL")
            if span is None:
                return
            number = attempt if attempt is not None else (call.attempt + 1 if call else 0)
            self._describe_tool(span, name, call_id, number)
            if call is None:
                span.attributes[UNPAIRED] = True
            else:
                span.attributes["agentstream.tool.retry_of"] = call.span.span_id.hex()
                if MLFLOW_INPUTS in call.span.attributes:
                    span.attributes[MLFLOW_INPUTS] = call.span.attributes[MLFLOW_INPUTS]
            call = Call(name=name, call_id=call_id, span=span, attempt=number)
        span = call.span
        if attempt is not None:
            span.attributes[ATTEMPT] = attempt
            call.attempt = attempt
        if error is None:
            span.status = StatusCode.OK
            if output is not None and output != "":
                span.attributes[MLFLOW_OUTPUTS] = self._value(output)
        else:
            span.fail(error)
            self._add_event(
                span, SpanEvent("exception", now, {"exception.message": self._value(error)})
            )
            self._calls.mark_failed(call)
        span.finish(now)

    def _on_tool_called(self, event: Event, data: dict[str, Any], now: int) -> None:
        self._open_call(event, _str(data, "name", "unknown"), data.get("args"), now)

    def _on_tool_result(self, event: Event, data: dict[str, Any], now: int) -> None:
        output = data.get("output")
        self._close_call(event, _str(data, "name", "unknown"), now, error=None, output=output)
        sources = data.get("sources")
        if sources:
            self._root_event("tool.sources", now, {"sources": self._value(sources)})

    def _on_tool_error(self, event: Event, data: dict[str, Any], now: int) -> None:
        self._close_call(
            event,
            _str(data, "name", "unknown"),
            now,
            error=_str(data, "error", "tool error"),
            attempt=_int(data, "attempt"),
        )

    def _on_attempt(self, event: Event, data: dict[str, Any], now: int) -> None:
        args = _str(data, "arguments_preview")
        self._open_call(event, _str(data, "tool_name", "unknown"), args, now)

    def _on_complete(self, event: Event, data: dict[str, Any], now: int) -> None:
        status = _str(data, "status", "success")
        name = _str(data, "tool_name", "unknown")
        result = _str(data, "result_preview")
        failed = status.lower() not in ("success", "ok")
        self._close_call(
            event, name, now, error=f"status {status}" if failed else None, output=result
        )

    def _on_failure(self, event: Event, data: dict[str, Any], now: int) -> None:
        kind, message = _str(data, "error_type"), _str(data, "error_message")
        error = f"{kind}: {message}" if kind and message else kind or message or "tool failure"
        self._close_call(event, _str(data, "tool_name", "unknown"), now, error=error)

    def _decision(self, event: Event, data: dict[str, Any], now: int) -> None:
        """Calute's decisions around a call: an event on the attempt they belong to."""
        name = _str(data, "tool_name", "unknown")
        short = event.type.removeprefix("audit.")
        attrs: Attributes = {
            k: self._value(v)
            for k, v in data.items()
            if k not in ("tool_name", "metadata", "severity") and v not in (None, "")
        }
        span_event = SpanEvent(short, now, attrs)
        blocked = event.type == "audit.tool_loop_block" or (
            event.type == "audit.tool_policy_decision" and _str(data, "action") == "deny"
        )
        if blocked:  # the call never runs: a zero-length error span says so
            span = self._child(f"tool:{name}", now, event.event_id, span_type="TOOL")
            if span is None:
                return
            self._describe_tool(span, name, _call_id(data), 0)
            for pending in self._pending.pop(name, []):
                self._add_event(span, pending)
            self._add_event(span, span_event)
            span.attributes["agentstream.blocked"] = True
            span.fail(
                f"blocked by loop detection ({_str(data, 'pattern')})"
                if event.type == "audit.tool_loop_block"
                else f"denied by policy {_str(data, 'policy_source')}".rstrip()
            )
            span.finish(now)
            return
        after_attempt = event.type == "audit.sandbox_decision" or (
            event.type == "audit.hook_mutation"
            and _str(data, "mutated_field") not in ("arguments", "args")
        )
        call = self._calls.oldest_open(name) if after_attempt else None
        if call is not None:
            self._add_event(call.span, span_event)
        elif sum(map(len, self._pending.values())) < self.limits.max_events_per_span:
            # all names together (the agent's): the root takes no more at the end
            self._pending.setdefault(name, []).append(span_event)

    # --- guards, retrieval, thinking, plans, the rest -------------------------------------

    def _on_guard_checked(self, event: Event, data: dict[str, Any], now: int) -> None:
        attrs: Attributes = {
            "guard": _str(data, "guard"),
            "direction": _str(data, "direction"),
            "allowed": bool(data.get("allowed", True)),
        }
        if _str(data, "reason"):
            attrs["reason"] = self._value(_str(data, "reason"))
        self._root_event(event.type, now, attrs)

    def _on_guard_blocked(self, event: Event, data: dict[str, Any], now: int) -> None:
        guard = _str(data, "guard") or _str(data, "direction", "guard")
        span = self._child(f"guard:{guard}", now, event.event_id, span_type="GUARDRAIL")
        if span is None:
            return
        span.attributes["agentstream.guard.direction"] = _str(data, "direction")
        reason = _str(data, "reason")
        span.attributes["agentstream.guard.reason"] = self._value(reason)
        span.fail(f"blocked: {reason}" if reason else "blocked")
        span.finish(now)

    def _on_retrieval_searched(self, event: Event, data: dict[str, Any], now: int) -> None:
        span = self._child("retrieval", now, event.event_id, span_type="RETRIEVER")
        if span is not None:
            span.attributes[MLFLOW_INPUTS] = self._value(dict(data))
            self._retrievals.append(span)

    def _on_retrieval_results(self, event: Event, data: dict[str, Any], now: int) -> None:
        span = self._retrievals.popleft() if self._retrievals else None
        if span is None:
            span = self._child("retrieval", now, event.event_id, span_type="RETRIEVER")
            if span is None:
                return
            span.attributes[UNPAIRED] = True
        count = _int(data, "count")
        if count is not None:
            span.attributes["agentstream.retrieval.count"] = count
        span.attributes[MLFLOW_OUTPUTS] = self._value(dict(data))
        span.status = StatusCode.OK
        span.finish(now)

    def _on_thinking_started(self, event: Event, data: dict[str, Any], now: int) -> None:
        span = self._child("thinking", now, event.event_id, span_type="CHAIN")
        if span is not None:
            self._thinking.append(span)

    def _on_thinking_completed(self, event: Event, data: dict[str, Any], now: int) -> None:
        if self._thinking:
            span = self._thinking.popleft()
            if data:
                span.attributes[MLFLOW_OUTPUTS] = self._value(dict(data))
            span.finish(now)

    def _on_plan_created(self, event: Event, data: dict[str, Any], now: int) -> None:
        span = self._child("plan", now, event.event_id, span_type="CHAIN")
        if span is not None:
            span.attributes[MLFLOW_INPUTS] = self._value(
                {"goal": data.get("goal", ""), "steps": data.get("steps")}
            )
            self._plan = span

    def _on_step_started(self, event: Event, data: dict[str, Any], now: int) -> None:
        index = _int(data, "index")
        span = self._child("plan.step", now, event.event_id, parent=self._plan, span_type="CHAIN")
        if span is None:
            return
        span.attributes["agentstream.plan.step_index"] = index if index is not None else -1
        span.attributes[MLFLOW_INPUTS] = self._value(data.get("step"))
        self._steps.setdefault(index if index is not None else -1, deque()).append(span)

    def _on_step_finished(self, event: Event, data: dict[str, Any], now: int) -> None:
        index = _int(data, "index")
        queue = self._steps.get(index if index is not None else -1)
        span = queue.popleft() if queue else None
        if span is None:
            span = self._child("plan.step", now, event.event_id, parent=self._plan)
            if span is None:
                return
            span.attributes[UNPAIRED] = True
        if event.type == "plan.step.failed":
            span.fail(_str(data, "error", "step failed"))
        else:
            span.status = StatusCode.OK
        span.finish(now)

    def _on_plan_completed(self, event: Event, data: dict[str, Any], now: int) -> None:
        if self._plan is None:
            return
        progress = data.get("progress")
        if progress is not None:
            self._plan.attributes[MLFLOW_OUTPUTS] = self._value({"progress": progress})
        self._plan.status = StatusCode.OK
        self._plan.finish(now)
        self._plan = None

    def _on_root_event(self, event: Event, data: dict[str, Any], now: int) -> None:
        attrs: Attributes = {
            k: self._value(v) for k, v in data.items() if k != "metadata" and v is not None
        }
        self._root_event(event.type, now, attrs)

    def _on_error(self, event: Event, data: dict[str, Any], now: int) -> None:
        attrs: Attributes = {"agentstream.event_type": event.type}
        kind = _str(data, "error_type")
        if kind:
            attrs["exception.type"] = kind
        message = _str(data, "error_message") or _str(data, "error")
        attrs["exception.message"] = self._value(message)
        if _str(data, "error_context"):
            attrs["agentstream.error_context"] = self._value(_str(data, "error_context"))
        self._root_event("exception", now, attrs)

    # --- closing ----------------------------------------------------------------------------

    def finish(self, reason: str | None = None) -> Trace:
        """The trace of this turn. ``reason`` says why it closes without its end event
        (``idle_timeout``, ``evicted``, ``superseded``...); spans still open are closed at the
        last event's time and marked incomplete either way."""
        end = self.root.end_ns if self.ended and self.root.end_ns is not None else self.last_ns
        open_reason = reason or "turn_ended"
        for span in self.spans[1:]:
            if span.is_open:
                span.close_incomplete(end, open_reason)
        for name, pending in self._pending.items():
            for span_event in pending:
                span_event.attributes.setdefault("gen_ai.tool.name", name)
                self._add_event(self.root, span_event)
        self._pending.clear()
        if not self.ended:
            self.root.close_incomplete(end, reason or "no_end_event")
        return Trace(
            trace_id=self.trace_id,
            session_id=self.session_id,
            agent_id=self.agent_id,
            source=self.source,
            spans=self.spans,
            complete=self.ended and reason is None,
            dropped_spans=self.dropped_spans,
        )


_HANDLERS: dict[str, Any] = {
    "message.received": TurnBuilder._on_message_received,
    "message.response": TurnBuilder._on_message_response,
    "audit.turn_start": TurnBuilder._on_turn_start,
    "audit.turn_end": TurnBuilder._on_turn_end,
    "turn.started": TurnBuilder._on_round,
    "turn.ended": TurnBuilder._on_turn_ended,
    "llm.call.started": TurnBuilder._on_llm_started,
    "llm.call.completed": TurnBuilder._on_llm_completed,
    "tool.called": TurnBuilder._on_tool_called,
    "tool.result": TurnBuilder._on_tool_result,
    "tool.error": TurnBuilder._on_tool_error,
    "audit.tool_call_attempt": TurnBuilder._on_attempt,
    "audit.tool_call_complete": TurnBuilder._on_complete,
    "audit.tool_call_failure": TurnBuilder._on_failure,
    "audit.tool_policy_decision": TurnBuilder._decision,
    "audit.sandbox_decision": TurnBuilder._decision,
    "audit.tool_loop_warning": TurnBuilder._decision,
    "audit.tool_loop_block": TurnBuilder._decision,
    "audit.hook_mutation": TurnBuilder._decision,
    "guard.input.checked": TurnBuilder._on_guard_checked,
    "guard.output.checked": TurnBuilder._on_guard_checked,
    "guard.blocked": TurnBuilder._on_guard_blocked,
    "retrieval.searched": TurnBuilder._on_retrieval_searched,
    "retrieval.results": TurnBuilder._on_retrieval_results,
    "thinking.started": TurnBuilder._on_thinking_started,
    "thinking.completed": TurnBuilder._on_thinking_completed,
    "plan.created": TurnBuilder._on_plan_created,
    "plan.step.started": TurnBuilder._on_step_started,
    "plan.step.completed": TurnBuilder._on_step_finished,
    "plan.step.failed": TurnBuilder._on_step_finished,
    "plan.completed": TurnBuilder._on_plan_completed,
    "correction.attempted": TurnBuilder._on_root_event,
    "memory.recalled": TurnBuilder._on_root_event,
    "memory.retrieved": TurnBuilder._on_root_event,
    "memory.stored": TurnBuilder._on_root_event,
    "memory.updated": TurnBuilder._on_root_event,
    "budget.warning": TurnBuilder._on_root_event,
    "budget.exceeded": TurnBuilder._on_root_event,
    "agent.error": TurnBuilder._on_error,
    "audit.error": TurnBuilder._on_error,
}

TRACED_TYPES: frozenset[str] = frozenset(_HANDLERS)
"""Every type that contributes to a trace; the service ignores the others."""
