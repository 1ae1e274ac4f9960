"""``window``: aggregates over a time or count window, per key (see :mod:`streams.rules.aggregates`)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from daemon.errors import ExpressionError
from streams.event import Event
from streams.rules.aggregates import SlidingCode, WindowProgram, WindowState, compile_aggregates
from streams.rules.operators import admit, keep_per_key, later, operator
from streams.rules.row import FIELDS_INDEX, Row, fields_of, make_row
from streams.rules.spec import (
    CompiledStep,
    Emit,
    OnNext,
    Operator,
    Seconds,
    StepContext,
    StepModel,
    StepScope,
    StepSpec,
    describe_expression_error,
    per_key_text,
    seconds_text,
)

__all__ = ["SPEC", "WindowConfig", "compile_window", "window"]

new_row = tuple.__new__  # a Row from a plain event's fields and the computed ones (make_row's fast case)


class WindowConfig(StepModel):
    """``window``: aggregates over a time or count window, per key."""

    seconds: Seconds | None = Field(None, description="Window length in event-time seconds (or `count`).")
    count: int | None = Field(None, ge=1, le=1_000_000, description="Window length in events (or `seconds`).")
    mode: Literal["sliding", "tumbling"] = Field(
        "sliding", description="sliding: emit per event over the last window; tumbling: emit once per window."
    )
    per_key: bool = Field(True, description="One window per event key (false: one for all).")
    aggregates: dict[str, str] = Field(
        min_length=1, description="Output field → aggregate, e.g. `vwap: vwap(price, qty)`."
    )
    min_events: int = Field(1, ge=1, description="Emit only when the window holds at least this many events.")
    max_events: int = Field(
        100_000, ge=1, le=10_000_000, description="Most events a sliding window holds (oldest dropped first)."
    )

    @model_validator(mode="after")
    def _one_length(self) -> WindowConfig:
        if (self.seconds is None) == (self.count is None):
            raise ValueError("give exactly one of seconds (a time window) or count (a count window)")
        return self


def window(
    program: WindowProgram,
    ctx: StepContext,
    label: str,
    *,
    seconds: float | None,
    count: int | None,
    tumbling: bool,
    per_key: bool,
    min_events: int,
    max_events: int,
) -> Operator:
    """Aggregate over a time or count window, sliding (emit per event) or tumbling (emit per window).

    - sliding, time: on each event, the aggregates over the events of its key with
      ``ts - seconds < t <= ts``;
    - sliding, count: on each event, over the last ``count`` events of its key;
    - tumbling, time: windows ``[k*seconds, (k+1)*seconds)`` of event time; each non-empty one
      is emitted once when the watermark reaches its end, with ``ts`` = the end and fields
      ``window_start`` / ``window_end``; empty windows emit nothing;
    - tumbling, count: every ``count`` events of a key, once.

    Emitted rows carry the newest event of the window plus the aggregates (only when the window
    holds at least ``min_events``). A sliding window holds at most ``max_events`` (the oldest
    beyond are dropped, counted as ``overflow``).
    """
    stats = ctx.stats
    fail = ctx.fail
    max_keys = ctx.max_keys
    evaluate = program.evaluate
    add = program.add
    remove_oldest = program.remove_oldest
    results = program.results

    if not tumbling and seconds is not None:  # the common case, on its own: per event, nothing else
        span = seconds
        code = program.sliding_code()
        if code is not None:  # plain running sums: the whole step compiled into one function

            def build_compiled(emit: Emit) -> OnNext:
                assert code is not None
                # compiled when built: the later steps, made already, have asked for their values
                build_fused = _fused_sliding_time(
                    code,
                    program,
                    ctx,
                    label,
                    span=span,
                    per_key=per_key,
                    min_events=min_events,
                    max_events=max_events,
                )
                states: OrderedDict[Any, WindowState] = OrderedDict()
                on_next = build_fused(emit, states)

                keep_per_key(ctx.keep, states, ctx.max_keys)  # key → its window's events and sums
                return on_next

            return operator(build_compiled)

        def build_sliding_time(emit: Emit) -> OnNext:
            states: OrderedDict[Any, WindowState] = OrderedDict()
            get, to_end = states.get, states.move_to_end

            def on_next(item: Event) -> None:
                try:
                    values = evaluate(item)
                except Exception as exc:
                    fail(label, exc, item)
                    return
                k = item.key if per_key else None
                st = get(k)
                if st is None:
                    st = admit(states, k, WindowState(program, True), max_keys, stats)
                else:
                    to_end(k)
                ts = item.ts
                entries = st.entries
                assert entries is not None
                cutoff = ts - span
                while entries and entries[0][0] <= cutoff:
                    remove_oldest(st)
                add(st, ts, values)
                if st.n > max_events:
                    while st.n > max_events:
                        remove_oldest(st)
                        stats.overflow += 1
                if st.n >= min_events:
                    if len(item) == FIELDS_INDEX and item.kind:  # a plain event: its fields as they are
                        emit(new_row(Row, item + (results(st, {}),)))  # noqa: RUF005  # faster
                    else:
                        emit(make_row(item, results(st, dict(fields_of(item)))))

            keep_per_key(ctx.keep, states, ctx.max_keys)  # key → its window's events and sums
            return on_next

        return operator(build_sliding_time)

    if not tumbling or count is not None:  # no timers: a window moves (or closes) on its own events
        sliding = not tumbling
        length = count if count is not None else 0  # of a count window, in events

        def build_untimed(emit: Emit) -> OnNext:
            states: OrderedDict[Any, WindowState] = OrderedDict()

            def on_next(item: Event) -> None:
                try:
                    values = evaluate(item)
                except Exception as exc:
                    fail(label, exc, item)
                    return
                k = item.key if per_key else None
                st = states.get(k)
                if st is None:
                    st = admit(states, k, WindowState(program, sliding), max_keys, stats)
                else:
                    states.move_to_end(k)
                ts = item.ts
                if sliding:
                    entries = st.entries
                    assert entries is not None
                    if seconds is not None:
                        cutoff = ts - seconds
                        while entries and entries[0][0] <= cutoff:
                            remove_oldest(st)
                    else:
                        while st.n >= length:
                            remove_oldest(st)
                    add(st, ts, values)
                    while st.n > max_events:
                        remove_oldest(st)
                        stats.overflow += 1
                else:  # tumbling by count: complete (and forgotten) at its `count`-th event
                    add(st, ts, values)
                    if st.n < length:
                        return
                    del states[k]
                if st.n >= min_events:
                    emit(make_row(item, results(st, dict(fields_of(item)))))

            keep_per_key(ctx.keep, states, ctx.max_keys)  # key → its window's events and sums
            return on_next

        return operator(build_untimed)

    assert seconds is not None
    clock = ctx.need_clock()
    size = seconds

    def build_tumbling_time(emit: Emit) -> OnNext:
        states: OrderedDict[Any, WindowState] = OrderedDict()

        def flush(st: WindowState) -> None:
            if st.n >= min_events:
                end = st.start + size
                out = dict(fields_of(st.item))
                out["window_start"] = st.start
                out["window_end"] = end
                emit(later(st.item, end, results(st, out)))

        def close(arg: tuple[Any, WindowState]) -> None:
            k, st = arg
            if states.get(k) is st:
                del states[k]
                flush(st)

        def on_next(item: Event) -> None:
            try:
                values = evaluate(item)
            except Exception as exc:
                fail(label, exc, item)
                return
            k = item.key if per_key else None
            ts = item.ts
            start = math.floor(ts / size) * size
            st = states.get(k)
            if st is not None and st.start != start:  # its close timer has not fired (clock skew)
                del states[k]
                flush(st)
                st = None
            if st is None:
                st = admit(states, k, WindowState(program, False), max_keys, stats)
                st.start = start
                clock.call_at(start + size, close, (k, st))
            else:
                states.move_to_end(k)
            add(st, ts, values)
            st.item = item

        def restore(saved: list[tuple[Any, WindowState]]) -> None:
            states.clear()
            for k, st in saved[-max_keys:]:
                states[k] = st
                clock.call_at(st.start + size, close, (k, st))

        ctx.keep(lambda: list(states.items()), restore)
        return on_next

    return operator(build_tumbling_time)


_SLIDING_TIME = """\
def build(emit, states):
    get, to_end = states.get, states.move_to_end

    def on_next(item):
        try:
{evaluate}
        except Exception as exc:
            fail(label, exc, item)
            return
        k = {key}
        st = get(k)
        if st is None:
            st = admit(states, k, WindowState(program, True), max_keys, stats)
        else:
            to_end(k)
        ts = item.ts
        entries = st.entries
        cutoff = ts - {span!r}
        while entries and entries[0][0] <= cutoff:
{remove}
{add}
        if _n > {max_events!r}:
            while st.n > {max_events!r}:
                remove_oldest(st)
                stats.overflow += 1
            _n = st.n
            _sums = st.sums
        if {enough}:
{first}            if len(item) == {plain_length!r} and item.kind:  # a plain event: its fields as they are
                _row = new_row(Row, item + ({{{literal}}},))
            else:
                _out = dict(fields_of(item))
{assign}
                _row = make_row(item, _out)
{hand}            emit(_row)

    return on_next
"""


def _fused_sliding_time(
    code: SlidingCode,
    program: WindowProgram,
    ctx: StepContext,
    label: str,
    *,
    span: float,
    per_key: bool,
    min_events: int,
    max_events: int,
) -> Callable[[Emit, OrderedDict[Any, WindowState]], OnNext]:
    """``build(emit, states) -> on_next`` of a sliding time window whose aggregates keep plain running
    sums: what the generic ``on_next`` below does with :class:`WindowProgram`'s functions, with their
    lines (:meth:`WindowProgram.sliding_code`) written into one function. The same values, in the
    same order; the state is the same :class:`WindowState`."""

    def indent(lines: list[str], depth: int) -> str:
        return "\n".join(" " * depth + line for line in lines)

    uses_first = any("_first" in value for _name, value in code.results)
    # inputs a later step reads too (StepContext.values): handed over with each row
    cells = {
        i: ctx.values[key] for i, key in enumerate(program.keys) if key is not None and key in ctx.values
    }
    source = _SLIDING_TIME.format(
        evaluate=indent(code.evaluate, 12),
        key="item.key" if per_key else "None",
        plain_length=FIELDS_INDEX,
        span=float(span),
        max_events=int(max_events),
        enough="True" if min_events <= 1 else f"_n >= {int(min_events)}",  # a window holds at least 1
        remove=indent(code.remove, 12),
        add=indent(code.add, 8),
        first="            _first = entries[0][2]\n" if uses_first else "",
        literal=", ".join(f"{name!r}: {value}" for name, value in code.results),
        assign=indent([f"_out[{name!r}] = {value}" for name, value in code.results], 16),
        hand="".join(f"            _cell{i}[0] = _row\n            _cell{i}[1] = _v{i}\n" for i in cells),
    )
    names = dict(code.names)
    names.update({f"_cell{i}": cell for i, cell in cells.items()})
    names.update(
        fail=ctx.fail,
        label=label,
        admit=admit,
        WindowState=WindowState,
        program=program,
        max_keys=ctx.max_keys,
        stats=ctx.stats,
        remove_oldest=program.remove_oldest,
        new_row=new_row,
        Row=Row,
        fields_of=fields_of,
        make_row=make_row,
    )
    exec(compile(source, f"<window {label}>", "exec"), names)  # our lines; names only as repr() literals
    build: Callable[[Emit, OrderedDict[Any, WindowState]], OnNext] = names["build"]
    return build


def compile_window(cfg: WindowConfig, scope: StepScope) -> CompiledStep | None:
    ok = True
    for name in cfg.aggregates:
        ok &= scope.define(name, "aggregates", name)

    def bad(name: str, exc: ExpressionError) -> None:
        scope.problem(describe_expression_error(exc, cfg.aggregates[name]), "aggregates", name)

    program = compile_aggregates(cfg.aggregates, scope.names, now=scope.now, on_error=bad)
    scope.add(*cfg.aggregates)
    tumbling = cfg.mode == "tumbling"
    timed = cfg.seconds is not None
    if tumbling and timed:
        scope.add("window_start", "window_end")
    if program is None or not ok:
        return None
    length = seconds_text(cfg.seconds) if cfg.seconds is not None else f"{cfg.count} events"
    summary = f"window {length} {cfg.mode}{per_key_text(cfg.per_key)}: {', '.join(cfg.aggregates)}"
    label = scope.label

    def make(ctx: StepContext) -> Operator:
        return window(
            program,
            ctx,
            label,
            seconds=cfg.seconds,
            count=cfg.count,
            tumbling=tumbling,
            per_key=cfg.per_key,
            min_events=cfg.min_events,
            max_events=cfg.max_events,
        )

    # a sliding time window needs events in time order; a tumbling one needs timers
    return scope.compiled(summary, make, uses_clock=timed)


SPEC = StepSpec("window", WindowConfig, compile_window, checkpoint="kept")
