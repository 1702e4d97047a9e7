"""The lake sink: ``python -m serving.sink`` moves events from the Redis Stream into the lake.

A consumer group (``lake-sink``) on ``recstack:events``: XREADGROUP a batch, write it with
``recstack.lake.write_events`` under a batch key made of the batch's first and last stream ids,
then XACK. An entry is acknowledged only after its batch is in the lake, so a crash loses
nothing: on restart the consumer first re-reads its own pending entries (same ids, same batch
key, the same file is rewritten) and claims entries other consumers left idle. Readers of the
lake de-duplicate on ``event_id``, so a batch re-delivered with another composition is harmless.
Entries that are not acceptable events - not UTF-8, not an ``Event``, or outside the stack's
time and id rules (``EventRules``, the API's own) - go to a dead-letter file with the reason, are
counted and acknowledged: no row can make the sink crash-loop.

After each acknowledgement the sink trims the stream (XTRIM MINID) below the oldest entry any
consumer group still needs - its oldest pending entry, else its last delivered one - and keeps
acknowledged entries ``retention_s`` longer for the monitor's XRANGE. An unacknowledged entry is
never trimmed, so the stream's size is the unacknowledged backlog (bounded by the API's
``events.max_stream_entries``) plus ``retention_s`` of traffic.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import redis
from pydantic import ValidationError

from recstack import lake
from recstack.logs import configure_logging, quiet_third_party
from recstack.schemas import EVENT_SCHEMA, Event
from recstack.settings import Settings, get_settings
from serving.events import EVENTS_STREAM, EventRules

logger = logging.getLogger(__name__)

GROUP = "lake-sink"


@dataclass
class SinkStats:
    """What a sink has done since it started."""

    written: int = 0
    dead_letter: int = 0
    batches: int = 0
    claimed: int = 0
    trimmed: int = 0
    files: list[Path] = field(default_factory=list)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


def _decode(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


def _shown(fields: dict[bytes, bytes]) -> dict[str, str]:
    """The entry as text for the dead letter, whatever bytes it holds."""
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}


def _stream_id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = (value.decode() if isinstance(value, bytes) else value).partition("-")
    return int(ms), int(seq or 0)


class LakeSink:
    """One consumer of the group; ``run_once`` handles one batch, ``run`` loops until stopped."""

    def __init__(
        self,
        client: Any,
        lake_dir: Path,
        dead_letter: Path,
        consumer: str,
        stream: str = EVENTS_STREAM,
        batch_size: int = 1000,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        ack_delay_s: float = 0.0,
        rules: EventRules | None = None,
        retention_s: float | None = None,
    ) -> None:
        self.client = client
        self.lake_dir = Path(lake_dir)
        self.dead_letter = Path(dead_letter)
        self.consumer = consumer
        self.stream = stream
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        # Chaos knob (sink.ack_delay_s): widens the window between the lake write and
        # the XACK, where a crash leaves written-but-pending entries, so tests can hit it.
        self.ack_delay_s = ack_delay_s
        # The API's time/id rules (None: shape only); entries breaking them are dead letters.
        self.rules = rules
        # Acknowledged entries older than this are trimmed (None: never trim).
        self.retention_s = retention_s
        self.stats = SinkStats()
        self._own_pending_done = False
        self._stop = False

    def ensure_group(self) -> None:
        """Create the consumer group (from the stream's start) unless it exists."""
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _next_batch(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        # 1. Our own pending entries first: written (maybe) but not acknowledged before a crash.
        if not self._own_pending_done:
            reply = self.client.xreadgroup(
                GROUP, self.consumer, {self.stream: "0"}, count=self.batch_size
            )
            entries = reply[0][1] if reply else []
            if entries:
                return entries
            self._own_pending_done = True
        # 2. Entries another (dead) consumer left pending for too long.
        claimed = self.client.xautoclaim(
            self.stream, GROUP, self.consumer, self.claim_idle_ms, "0-0", count=self.batch_size
        )
        entries = [e for e in claimed[1] if e[1] is not None]
        if entries:
            self.stats.claimed += len(entries)
            return entries
        # 3. New entries.
        reply = self.client.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=self.batch_size, block=self.block_ms
        )
        return reply[0][1] if reply else []

    def run_once(self) -> int:
        """Read, write and acknowledge one batch; returns the number of entries handled."""
        entries = self._next_batch()
        if not entries:
            return 0
        good: list[dict[str, Any]] = []
        bad: list[dict[str, Any]] = []
        for entry_id, fields in entries:
            event, reason = self._convert(fields)
            if event is not None:
                good.append(event.model_dump())
            else:
                bad.append({"id": entry_id.decode(errors="replace"), "entry": _shown(fields),
                            "error": reason})
        if good:
            table = pa.Table.from_pylist(good, schema=EVENT_SCHEMA)
            first, last = entries[0][0].decode(), entries[-1][0].decode()
            self.stats.files += lake.write_events(table, self.lake_dir, f"stream-{first}-{last}")
        if bad:
            self._dead_letter(bad)
        if self.ack_delay_s:
            time.sleep(self.ack_delay_s)
        # Only now: everything of the batch is stored (lake or dead letter).
        self.client.xack(self.stream, GROUP, *[entry_id for entry_id, _ in entries])
        self.stats.written += len(good)
        self.stats.dead_letter += len(bad)
        for row in bad:
            kind = row["error"].split(":", 1)[0]
            self.stats.dead_letter_reasons[kind] = self.stats.dead_letter_reasons.get(kind, 0) + 1
        self.stats.batches += 1
        self.trim()
        logger.info("sink: %d events to the lake, %d to the dead letter", len(good), len(bad))
        return len(entries)

    def _convert(self, fields: dict[bytes, bytes]) -> tuple[Event | None, str]:
        """The entry's event, or None and why it cannot be stored (never raises)."""
        try:
            raw = _decode(fields)
        except UnicodeDecodeError as exc:
            return None, f"not_utf8: {exc}"
        try:
            event = Event.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "entry"
            return None, f"invalid: {where}: {first.get('msg', 'invalid')}"
        except Exception as exc:  # whatever else a hostile entry triggers must not crash-loop
            return None, f"invalid: {type(exc).__name__}: {exc}"
        problems = self.rules.problems(event) if self.rules is not None else []
        if problems:
            return None, "implausible: " + "; ".join(problems)
        return event, ""

    def trim_min_id(self) -> str | None:
        """The lowest id the stream must keep: no group's pending or undelivered entry, and no
        entry younger than ``retention_s`` (by Redis's clock, which made the ids), is below it.
        None: nothing may be trimmed (no retention, or no consumer group yet)."""
        if self.retention_s is None:
            return None
        groups = self.client.xinfo_groups(self.stream)
        if not groups:
            return None
        keep = []
        for group in groups:
            if int(group["pending"]):
                oldest = self.client.xpending(self.stream, group["name"])["min"]
                keep.append(_stream_id(oldest))
            else:
                keep.append(_stream_id(group["last-delivered-id"]))
        seconds, micros = self.client.time()
        keep.append((int((seconds + micros / 1e6 - self.retention_s) * 1000), 0))
        ms, seq = min(keep)
        return f"{ms}-{seq}"

    def trim(self) -> int:
        """Drop the entries below ``trim_min_id`` (exact, so the bound is what the tests see)."""
        min_id = self.trim_min_id()
        if min_id is None:
            return 0
        removed = int(self.client.xtrim(self.stream, minid=min_id, approximate=False))
        self.stats.trimmed += removed
        return removed

    def _dead_letter(self, rows: Iterable[dict[str, Any]]) -> None:
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        with self.dead_letter.open("ab") as f:
            for row in rows:
                f.write(orjson.dumps(row) + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def stop(self, *_: Any) -> None:
        self._stop = True

    def run(self) -> SinkStats:
        """Loop until ``stop()`` (SIGTERM/SIGINT); Redis errors are retried with back-off."""
        backoff = 0.2
        group_ready = False
        while not self._stop:
            try:
                if not group_ready:
                    self.ensure_group()
                    group_ready = True
                self.run_once()
                backoff = 0.2
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("sink: redis unavailable (%s); retrying in %.1fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        return self.stats


def sink_for(settings: Settings, consumer: str | None = None, **kwargs: Any) -> LakeSink:
    """A ``LakeSink`` on the settings' Redis and lake; the consumer name defaults to
    ``sink.consumer`` (``RECSTACK_SINK__CONSUMER``) or the host name (stable across restarts of
    one program)."""
    client = redis.Redis.from_url(
        settings.redis.url, socket_timeout=5.0, socket_connect_timeout=2.0
    )
    name = consumer or settings.sink.consumer or socket.gethostname()
    dead = settings.root / "sink" / "dead_letter.jsonl"
    kwargs.setdefault("ack_delay_s", settings.sink.ack_delay_s)
    kwargs.setdefault("rules", EventRules.of(settings))
    kwargs.setdefault("retention_s", settings.events.stream_retention.total_seconds())
    return LakeSink(client, settings.lake_dir, dead, name, **kwargs)


def is_alive(settings: Settings, consumer: str | None = None, max_idle_ms: int = 15_000) -> bool:
    """Has this host's consumer (``sink_for``'s name) read the stream within ``max_idle_ms``?

    A running sink asks for entries at least every ``block_ms`` (1 s), so a longer idle time
    means it is stuck or gone. What ``python -m serving.sink --check`` (the container's health
    check) answers with its exit code.
    """
    sink = sink_for(settings, consumer)
    try:
        consumers = sink.client.xinfo_consumers(sink.stream, GROUP)
    except redis.RedisError:
        return False
    finally:
        sink.client.close()
    for c in consumers:
        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
        if name == sink.consumer:
            return int(c["idle"]) <= max_idle_ms
    return False


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m serving.sink`` (``--check``: exit 0 iff the sink is alive)."""
    quiet_third_party()
    settings = get_settings()
    if "--check" in (sys.argv[1:] if argv is None else argv):
        sys.exit(0 if is_alive(settings) else 1)
    configure_logging(settings.log_level, settings.log_json)
    sink = sink_for(settings)
    signal.signal(signal.SIGTERM, sink.stop)
    signal.signal(signal.SIGINT, sink.stop)
    logger.info("sink %s: %s -> %s", sink.consumer, sink.stream, settings.lake_dir)
    stats = sink.run()
    logger.info("sink stopped: %s", stats)


if __name__ == "__main__":
    main()
