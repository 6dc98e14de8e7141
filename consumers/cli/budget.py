"""``agentstream budget show``: current usage against limits, read from the budget changelog."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from ._common import add_kafka_arguments, settings_from

if TYPE_CHECKING:
    from agentstream.consumers.budget.accounting import ScopeState
    from agentstream.consumers.budget.config import BudgetConfig


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "budget", help="budgets: usage per session, agent day and user day"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show", help="print current usage against limits (from the budget changelog topic)"
    )
    add_kafka_arguments(show)
    which = show.add_mutually_exclusive_group()
    which.add_argument("--session", metavar="ID", help="one session")
    which.add_argument("--agent", metavar="ID", help="one agent's days")
    which.add_argument("--user", metavar="ID", help="one user's days")
    show.add_argument(
        "--day",
        type=_day,
        metavar="YYYY-MM-DD",
        help="only this UTC day (agent/user scopes)",
    )
    show.add_argument(
        "--config",
        dest="budget_config",
        metavar="PATH",
        help="budget TOML file for the limits (default: AGENTSTREAM_BUDGET_CONFIG)",
    )
    show.add_argument("--json", action="store_true", help="JSON instead of a table")
    show.set_defaults(func=run_show, quiet_client_logs=True)


def _selected(scope: str, args: argparse.Namespace) -> bool:
    if args.session:
        return scope == f"session:{args.session}"
    if args.agent:
        wanted = f"agent:{args.agent}:"
    elif args.user:
        wanted = f"user:{args.user}:"
    else:
        wanted = ""
    if not scope.startswith(wanted):
        return False
    return not args.day or scope.startswith("session:") or scope.endswith(f":{args.day}")


def usage_rows(state: ScopeState, config: BudgetConfig) -> dict[str, Any]:
    """One scope as a JSON-ready dict: usage, limits, percentages and signals."""
    from agentstream.consumers.budget.accounting import Ledger, Level
    from agentstream.consumers.budget.config import DIMENSIONS, Dimension

    limits = Ledger(config).limits(state)
    dims: dict[str, Any] = {}
    for dimension in DIMENSIONS:
        limit = limits.get(dimension)
        used = state.used(dimension)
        if limit is None and not used and dimension is Dimension.WALL_TIME_S:
            continue
        level = Level(state.signals.get(dimension.value, 0))
        dims[dimension.value] = {
            "used": used,
            "limit": limit,
            "percent": round(100 * used / limit, 1) if limit else None,
            "signal": level.name.lower() if level else None,
        }
    return {
        "scope": state.scope,
        "agent_id": state.agent_id,
        "user_id": state.user_id,
        "events": state.events,
        "input_tokens": state.input_tokens,
        "output_tokens": state.output_tokens,
        "estimated_tokens": state.estimated_tokens,
        "unpriced_tokens": state.unpriced_tokens,
        "pending_signals": len(state.pending),
        "dimensions": dims,
    }


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4f}".rstrip("0")


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ("SCOPE", "DIMENSION", "USED", "LIMIT", "%", "SIGNAL")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        for name, dim in row["dimensions"].items():
            percent = dim["percent"]
            lines.append(
                (
                    row["scope"],
                    name,
                    _number(dim["used"]),
                    _number(dim["limit"]),
                    "-" if percent is None else f"{percent:.1f}",
                    dim["signal"] or "",
                )
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2, 3, 4}
    return "\n".join(
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ).rstrip()
        for line in lines
    )


async def run_show(args: argparse.Namespace) -> int:
    from agentstream.consumers.budget.changelog import changelog_topic, read_states
    from agentstream.consumers.budget.service import BudgetSettings
    from agentstream.schemas.admin import wait_for_broker

    overrides = {"budget_config": args.budget_config} if args.budget_config else {}
    settings = settings_from(args, BudgetSettings, **overrides)
    config = settings.budget()
    await wait_for_broker(settings.admin_options(), timeout=10)
    states = await read_states(settings)
    rows = [
        usage_rows(state, config)
        for scope, state in sorted(states.items())
        if state is not None and _selected(scope, args)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(render_table(rows))
    if not rows:
        print(
            f"no budget state matches in {changelog_topic(settings.topic_prefix)}",
            file=sys.stderr,
        )
        return 1
    return 0


def _day(text: str) -> str:
    """A UTC day as the scopes spell it; anything else matched no scope, silently."""
    from datetime import date

    try:
        return date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, got {text!r}") from None
