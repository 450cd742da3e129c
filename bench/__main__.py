"""``python -m bench [scenario ...] [--quick] [--out bench/results/<name>.json]``

Starts its own Redis server (the embedded one, in a temporary folder; ``--redis-url`` uses
a running one instead), runs the chosen scenarios (all by default; names or globs such as
``'mlp-*'``) one after the other in registration order, prints a table and the goals, and
writes everything with a description of the machine to JSON. Scenarios live in the modules
of :data:`SCENARIO_MODULES`; see :mod:`bench.registry` to add one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from bench.harness import (
    ROOT,
    SCENARIO_LIMIT_S,
    BenchError,
    Context,
    Options,
    Processes,
    install_guards,
    machine_info,
    redis_server,
    scratch_dir,
    server_info,
    time_limit,
)
from bench.registry import SCENARIOS, Scenario, select
from bench.stats import Result

SCENARIO_MODULES = ("bench.scenarios_queue", "bench.scenarios_floor", "bench.scenarios_scripts", "bench.scenarios_compose", "bench.scenarios_rq", "bench.scenarios_adapters", "bench.scenarios_http", "bench.scenarios_bulk", "bench.scenarios_cluster", "bench.scenarios_batching", "bench.scenarios_streaming", "bench.scenarios_priority")  # fmt: skip
"""Imported in this order; their scenarios run in the order they are registered."""

RESULTS_DIR = ROOT / "bench" / "results"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="names or globs (all)")
    p.add_argument("--quick", action="store_true", help="fewer items: a smoke run (< 1 min)")
    p.add_argument("--out", type=Path, help="JSON output (default bench/results/<date>.json)")
    p.add_argument("--redis-url", help="use this server instead of an embedded one")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every item count")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=Options.max_in_flight,
        help="jobs a client keeps outstanding (default %(default)s)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads in the bench and every worker (default: torch's own)",
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return p


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for module in SCENARIO_MODULES:
        importlib.import_module(module)
    if args.list:
        width = max(len(name) for name in SCENARIOS)
        for s in SCENARIOS.values():
            print(f"{s.name:{width}}  {s.description}")
        return 0
    try:
        chosen = select(args.scenarios)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.scale <= 0 or args.max_in_flight < 1 or (args.torch_threads or 1) < 1:
        print(
            "bench: --scale must be > 0, --max-in-flight and --torch-threads >= 1", file=sys.stderr
        )
        return 2
    options = Options(
        quick=args.quick,
        scale=args.scale,
        max_in_flight=args.max_in_flight,
        redis_url=args.redis_url or os.environ.get("BENCH_REDIS_URL") or None,
        torch_threads=args.torch_threads,
    )
    out = args.out or RESULTS_DIR / time.strftime(
        f"%Y%m%d-%H%M%S{'-quick' if args.quick else ''}.json"
    )
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    install_guards()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)

    report: dict[str, Any] = {
        "command": ["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])],
        "options": asdict(options),
        "machine": machine_info(),
    }
    results: dict[str, Result] = {}
    errors: dict[str, str] = {}
    started = time.perf_counter()
    interrupted = False
    current: str | None = None
    try:
        with (
            scratch_dir() as workdir,
            Processes(workdir) as processes,
            redis_server(options, processes, workdir) as (url, server_pid),
        ):
            report["server"] = server_info(url, embedded=server_pid is not None)
            ctx = Context(options, url, server_pid, processes, workdir)
            for s in chosen:
                current = s.name
                print(f"bench: {s.name}: {s.description} ...", file=sys.stderr, flush=True)
                began = time.perf_counter()
                try:
                    with time_limit(SCENARIO_LIMIT_S[1] if options.quick else SCENARIO_LIMIT_S[0]):
                        result = s.run(ctx)
                except BenchError as exc:
                    errors[s.name] = str(exc)
                except Exception as exc:
                    errors[s.name] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                else:
                    results[s.name] = ctx.results[s.name] = result
                took = time.perf_counter() - began
                status = "failed: " + errors[s.name] if s.name in errors else "ok"
                print(f"bench: {s.name}: {status} ({took:.1f}s)", file=sys.stderr, flush=True)
    except KeyboardInterrupt as exc:
        interrupted = True
        if current and current not in results:
            errors[current] = "interrupted"
        print(f"\nbench: interrupted ({exc or 'Ctrl-C'}); children stopped", file=sys.stderr)

    goals = evaluate_goals(chosen, results)
    derived = evaluate_derived(chosen, results)
    print(table(chosen, results, errors))
    if goals:
        print()
        print(goal_table(goals))
    if derived:
        print()
        print(derived_table(derived))
    hops = cpu_table(chosen, results)
    if hops:
        print()
        print(hops)
    report.update(
        {
            "duration_s": time.perf_counter() - started,
            "interrupted": interrupted,
            "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "scenarios": {
                name: {"description": SCENARIOS[name].description, **r.to_dict()}
                for name, r in results.items()
            },
            "errors": errors,
            "goals": goals,
            "derived": derived,
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(_finite(report), indent=2, default=_json_default, allow_nan=False) + "\n"
    )
    print(f"\nwrote {out}", file=sys.stderr)
    if interrupted:
        return 130
    return 1 if errors else 0


def _json_default(value: Any) -> Any:
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


# -- reporting ------------------------------------------------------------------------------


def evaluate_goals(chosen: Sequence[Scenario], results: dict[str, Result]) -> list[dict[str, Any]]:
    """Every goal whose two scenarios both ran: the ratio of their items/s, and whether it
    meets the target."""
    goals = []
    for s in chosen:
        for goal in s.goals:
            this, ref = results.get(s.name), results.get(goal.reference)
            if this is None or ref is None:
                continue
            ratio = this.items_per_s / ref.items_per_s if ref.items_per_s > 0 else math.nan
            goals.append(
                {
                    "scenario": s.name,
                    "reference": goal.reference,
                    "label": goal.label,
                    "ratio": ratio,
                    "at_least": goal.at_least,
                    "met": None if goal.at_least is None else bool(ratio >= goal.at_least),
                }
            )
    return goals


def evaluate_derived(
    chosen: Sequence[Scenario], results: dict[str, Result]
) -> list[dict[str, Any]]:
    """Every derived figure whose scenarios all ran: its value, and whether it is within its
    bounds. A figure that cannot be computed (an input missing) has value None."""
    figures = []
    for s in chosen:
        for figure in s.derived:
            if not all(name in results for name in figure.needs):
                continue
            try:
                value = figure.compute(results)
            except (ArithmeticError, ValueError):
                value = None
            figures.append(
                {
                    "scenario": s.name,
                    "figure": figure.label,
                    "value": value,
                    "unit": figure.unit,
                    "formula": figure.formula,
                    "from": list(figure.needs),
                    "at_most": figure.at_most,
                    "at_least": figure.at_least,
                    "met": figure.met(value),
                }
            )
    return figures


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def _rows_to_text(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(chosen: Sequence[Scenario], results: dict[str, Result], errors: dict[str, str]) -> str:
    """scenario, items, items/s, p50/p99 under load, p50/p99 at concurrency 1, ratio."""
    rows = [
        [
            "scenario",
            "items",
            "items/s",
            "p50 ms",
            "p99 ms",
            "c1 p50 ms",
            "c1 p99 ms",
            "ratio to reference",
        ]
    ]
    for s in chosen:
        r = results.get(s.name)
        if r is None:
            reason = errors.get(s.name, "not run")
            rows.append([s.name, "-", "-", "-", "-", "-", "-", f"({reason.splitlines()[0][:60]})"])
            continue
        ratio = ""
        ref = results.get(s.reference) if s.reference else None
        if ref is not None and ref.items_per_s > 0:
            ratio = f"{r.items_per_s / ref.items_per_s:.2f}x {s.reference}"
        load, idle = r.latency, r.idle_latency
        rows.append(
            [
                s.name,
                str(r.items),
                f"{r.items_per_s:,.0f}",
                _ms(load.p50 if load else None),
                _ms(load.p99 if load else None),
                _ms(idle.p50 if idle else None),
                _ms(idle.p99 if idle else None),
                ratio,
            ]
        )
    return _rows_to_text(rows, right={1, 2, 3, 4, 5, 6})


def goal_table(goals: list[dict[str, Any]]) -> str:
    rows = [["goal (items/s ratio)", "ratio", "target", "met"]]
    for goal in goals:
        target = goal["at_least"]
        met = goal["met"]
        rows.append(
            [
                f"{goal['scenario']} / {goal['reference']}"
                + (f" ({goal['label']})" if goal.get("label") else ""),
                f"{goal['ratio']:.2f}",
                "-" if target is None else f">= {target:g}",
                "-" if met is None else ("yes" if met else "NO"),
            ]
        )
    return _rows_to_text(rows, right={1})


def derived_table(figures: list[dict[str, Any]]) -> str:
    rows = [["derived figure", "value", "target", "met"]]
    for figure in figures:
        value, unit = figure["value"], figure["unit"]
        if value is None or math.isnan(value):
            shown = "-"
        else:
            shown = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
        bounds = [f"<= {figure['at_most']:g}"] if figure["at_most"] is not None else []
        bounds += [f">= {figure['at_least']:g}"] if figure["at_least"] is not None else []
        met = figure["met"]
        rows.append(
            [
                f"{figure['scenario']}: {figure['figure']}",
                f"{shown} {unit}".rstrip(),
                ", ".join(bounds) or "-",
                "-" if met is None else ("yes" if met else "NO"),
            ]
        )
    return _rows_to_text(rows, right={1})


HOPS = (
    ("client", ("client",)),
    ("gateway", ("gateway",)),
    ("plain app", ("server",)),
    ("worker", ("worker", "workers")),
    ("redis", ("redis",)),
)
"""Columns of the CPU table: a hop and the ``cpu_us_per_item`` names it shows (the first one
present; ``workers`` is the sum of several worker processes)."""


def cpu_table(chosen: Sequence[Scenario], results: dict[str, Result]) -> str:
    """CPU microseconds per item in each hop, for every scenario that metered its processes
    (``cpu_us_per_item`` in its extra); empty when none did."""
    rows = [["CPU µs per item", *(hop for hop, _ in HOPS), "total"]]
    for s in chosen:
        r = results.get(s.name)
        per_item = r.extra.get("cpu_us_per_item") if r is not None else None
        if not per_item:
            continue
        cells, total = [], 0.0
        for _, names in HOPS:
            value = next((per_item[n] for n in names if n in per_item), None)
            cells.append("-" if value is None else f"{value:,.1f}")
            total += value or 0.0
        rows.append([s.name, *cells, f"{total:,.1f}"])
    return _rows_to_text(rows, right=set(range(1, len(HOPS) + 2))) if len(rows) > 1 else ""


if __name__ == "__main__":
    raise SystemExit(main())
