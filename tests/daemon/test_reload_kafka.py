"""Reload with the real broker: a Kafka source whose group and topics are unchanged keeps its assignment
and position across reloads; nothing is lost or duplicated (the ledger counts records end to end)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson

from tests.conftest import KafkaTopicFactory
from tests.daemon.test_kafka_delivery import N, spawn, wait_output, write_config
from tests.kafka_broker import unique_name
from tests.kafka_ledger import produce_ids, read_output

TAIL = 100  # records held back until the last reload

EXTRA_RULE = '  quiet: {{from: in, where: "data.id >= {limit}", then: [{{tool: note, args: {{id: "{{data.id}}"}}}}]}}\n'


async def test_reloads_mid_stream_keep_the_kafka_assignment_and_lose_or_repeat_nothing(
    tmp_path: Path, kafka_broker: object, kafka_topic: KafkaTopicFactory
) -> None:
    """20,000 records through a real `reflexd run` (Kafka source → rule → Kafka tool), with three SIGHUP
    reloads while it consumes: unchanged, a rule and a tool added, that rule changed. The source is
    kept every time (one partition assignment in the whole run), and the output topic holds every id
    exactly once."""
    tmp = tmp_path
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    src, out = await kafka_topic(4), await kafka_topic(4, prefix="out")
    group = unique_name("g")
    config = write_config(tmp / "c.yaml", bootstrap, src, out, group)
    base = config.read_text()
    # the last records are produced only once the last reload is applied: the changed rule must be the
    # one that sees ids >= N - 20 (with 4 partitions they could otherwise be consumed before it is in)
    await produce_ids(bootstrap, src, range(N - TAIL))
    log = tmp / "daemon.log"
    proc = spawn(config, log)

    def records() -> list[dict[str, object]]:
        return [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]

    async def reload(text: str, want: str) -> dict[str, object]:
        before = len([r for r in records() if str(r.get("msg")).startswith("reload")])
        config.write_text(text)
        proc.send_signal(signal.SIGHUP)
        for _ in range(200):
            done = [r for r in records() if str(r.get("msg")).startswith("reload")]
            if len(done) > before:
                assert done[-1]["msg"] == want, done[-1]
                return done[-1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no reload logged: {[r.get('msg') for r in records()][-20:]}")

    note = f"  note: {{type: file, path: {tmp / 'note.jsonl'}}}\nrules:\n"
    try:
        await wait_output(bootstrap, out, N // 10)
        assert (await reload(base, "reload: nothing changed"))["sources_kept"] == 1
        added = base.replace("rules:\n", note) + EXTRA_RULE.format(limit=N - 10)
        done = await reload(added, "reloaded")
        assert (
            done["rules_added"] == ["quiet"] and done["tools_added"] == ["note"] and done["sources_kept"] == 1
        )
        progress = await read_output(bootstrap, out, timeout=5)
        assert len(progress.counts) < N, "the stream had finished before the reloads"
        done = await reload(base.replace("rules:\n", note) + EXTRA_RULE.format(limit=N - 20), "reloaded")
        assert done["rules_changed"] == ["quiet"] and done["rules_kept"] == 1
        await produce_ids(bootstrap, src, range(N - TAIL, N))
        await wait_output(bootstrap, out, N)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    final = await read_output(bootstrap, out, timeout=20)
    assert final.lost(range(N)) == [] and final.duplicates == 0
    assert [r["msg"] for r in records()].count("partitions assigned") == 1
    assert not [r for r in records() if r.get("msg") == "partitions revoked"]
    noted = sorted(
        int(orjson.loads(line)["args"]["id"]) for line in (tmp / "note.jsonl").read_bytes().splitlines()
    )
    assert noted == list(range(N - 20, N))  # the changed rule saw the stream's end
