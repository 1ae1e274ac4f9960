"""Bytewax peer for bench/kafka_pipeline.py (runs in .bench-venvs/bytewax, made by `make bench-peers`).

The same job as reflexd's: consume the input topic from the beginning, JSON-parse (orjson), keep
``id % 100 < kept``, produce the record as JSON with acks=all (idempotent producer, linger 5 ms), one
worker (``bytewax.testing.run_main``). Bytewax's Kafka source does not commit consumer-group offsets: its
at-least-once comes from its own recovery store, which this job does not configure (no snapshots), so it
does less bookkeeping than reflexd and Quix; the output is still verified complete by the parent.
Prints ``READY`` before running and ``FIRST <time.perf_counter()>`` at the first record.

    python bytewax_job.py BOOTSTRAP IN_TOPIC OUT_TOPIC GROUP KEPT_PERCENT
"""

from __future__ import annotations

import sys
import time
from typing import Any

import bytewax.connectors.kafka.operators as kop
import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import OFFSET_BEGINNING, KafkaSinkMessage
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main


def main() -> None:
    bootstrap, src, out, group, kept_s = sys.argv[1:6]
    kept = int(kept_s)
    first = False

    def parse(msg: Any) -> dict[str, Any]:
        nonlocal first
        if not first:
            first = True
            print(f"FIRST {time.perf_counter()!r}", flush=True)
        value: dict[str, Any] = orjson.loads(msg.value)
        return value

    def render(v: dict[str, Any]) -> KafkaSinkMessage[None, bytes]:
        body = {"id": v["id"], "sym": v["sym"], "p": v["p"], "q": v["q"], "pad": v["pad"]}
        return KafkaSinkMessage(None, orjson.dumps(body))

    flow = Dataflow("bench")
    inp = kop.input(
        "in",
        flow,
        brokers=[bootstrap],
        topics=[src],
        starting_offset=OFFSET_BEGINNING,
        add_config={"group.id": group},
    )
    parsed = op.map("parse", inp.oks, parse)
    kept_stream = op.filter("keep", parsed, lambda v: v["id"] % 100 < kept)
    msgs = op.map("render", kept_stream, render)
    kop.output(
        "out",
        msgs,
        brokers=[bootstrap],
        topic=out,
        add_config={"acks": "all", "enable.idempotence": "true", "linger.ms": "5"},
    )
    print("READY", flush=True)
    run_main(flow)


if __name__ == "__main__":
    main()
