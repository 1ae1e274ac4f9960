"""Quix Streams peer for bench/kafka_pipeline.py (runs in .bench-venvs/quix, made by `make bench-peers`).

The same job as reflexd's: consume the input topic (a fresh group, from the earliest offset), JSON-parse,
keep ``id % 100 < kept``, produce the record as JSON with acks=all (idempotent producer, linger 5 ms),
at-least-once (Quix's default guarantee: offsets committed after the produced records are flushed).
Prints ``READY`` once imported and configured and ``FIRST <time.perf_counter()>`` at the first record;
the parent measures the end (output topic complete), CPU and RSS from /proc, then stops this process.

    python quix_job.py BOOTSTRAP IN_TOPIC OUT_TOPIC GROUP KEPT_PERCENT
"""

from __future__ import annotations

import sys
import time
from typing import Any

from quixstreams import Application


def main() -> None:
    bootstrap, src, out, group, kept_s = sys.argv[1:6]
    kept = int(kept_s)
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        auto_create_topics=False,
        producer_extra_config={"acks": "all", "enable.idempotence": True, "linger.ms": 5},
    )
    topic_in = app.topic(src, value_deserializer="json")
    topic_out = app.topic(out, value_serializer="json")
    first = False

    def keep(value: dict[str, Any]) -> bool:
        nonlocal first
        if not first:
            first = True
            print(f"FIRST {time.perf_counter()!r}", flush=True)
        return bool(value["id"] % 100 < kept)

    sdf = app.dataframe(topic_in)
    sdf = sdf.filter(keep)
    sdf = sdf.apply(lambda v: {"id": v["id"], "sym": v["sym"], "p": v["p"], "q": v["q"], "pad": v["pad"]})
    sdf.to_topic(topic_out)
    print("READY", flush=True)
    app.run()


if __name__ == "__main__":
    main()
