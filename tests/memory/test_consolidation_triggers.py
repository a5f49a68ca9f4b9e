"""Triggers: the nightly cron trigger across a day boundary and both 2026 DST changes in Europe/Berlin, and the
storage-pressure check firing a real consolidation within one interval of a threshold being crossed."""

from __future__ import annotations

import datetime as dt
import threading
import time
from zoneinfo import ZoneInfo

import pytest

from memory.consolidation import (
    ConsolidationConfig,
    ConsolidationDaemon,
    Consolidator,
    TriggerConfig,
    nightly_trigger,
    storage_pressure,
)

BERLIN = ZoneInfo("Europe/Berlin")


def _next(config: TriggerConfig, now: dt.datetime) -> dt.datetime:
    return nightly_trigger(config).get_next_fire_time(None, now)


@pytest.mark.parametrize(("now", "expected", "utc_offset_h"), [
    (dt.datetime(2026, 6, 10, 23, 59, tzinfo=BERLIN), dt.datetime(2026, 6, 11, 3, 0), 2),  # day boundary
    (dt.datetime(2026, 6, 10, 2, 59, tzinfo=BERLIN), dt.datetime(2026, 6, 10, 3, 0), 2),  # same day
    (dt.datetime(2026, 6, 10, 3, 0, 1, tzinfo=BERLIN), dt.datetime(2026, 6, 11, 3, 0), 2),  # just missed
    (dt.datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN), dt.datetime(2026, 3, 29, 3, 0), 2),  # CET -> CEST at 02:00
    (dt.datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN), dt.datetime(2026, 10, 25, 3, 0), 1),  # CEST -> CET at 03:00
    (dt.datetime(2026, 12, 31, 22, 0, tzinfo=dt.timezone.utc), dt.datetime(2027, 1, 1, 3, 0), 1),  # new year
])
def test_the_nightly_trigger_fires_at_3_local_across_days_and_dst(now, expected, utc_offset_h):
    fire = _next(TriggerConfig(timezone="Europe/Berlin"), now)
    assert fire.replace(tzinfo=None) == expected
    assert fire.utcoffset() == dt.timedelta(hours=utc_offset_h)


def test_the_nights_around_the_dst_changes_are_23_and_25_hours_apart():
    config = TriggerConfig(timezone="Europe/Berlin")
    utc = dt.timezone.utc  # aware datetimes in one zone subtract as wall clocks: compare in UTC
    spring = [_next(config, dt.datetime(2026, 3, d, 12, tzinfo=BERLIN)).astimezone(utc) for d in (26, 27, 28)]
    autumn = [_next(config, dt.datetime(2026, 10, d, 12, tzinfo=BERLIN)).astimezone(utc) for d in (23, 24, 25)]
    hours = [(b - a).total_seconds() / 3600 for a, b in zip(spring[:-1] + autumn[:-1], spring[1:] + autumn[1:],
                                                          strict=True)]
    assert hours == [24.0, 23.0, 25.0, 24.0]  # fires 03-27, 03-28, 03-29 (23 h) and 10-24, 10-25 (25 h), 10-26


def test_the_hour_and_timezone_are_configurable():
    fire = _next(TriggerConfig(cron_hour=23, cron_minute=30, timezone="America/New_York"),
                 dt.datetime(2026, 11, 1, 0, 0, tzinfo=dt.timezone.utc))  # 20:00 EDT on Oct 31
    assert (fire.hour, fire.minute, fire.day, fire.utcoffset()) == (23, 30, 31, dt.timedelta(hours=-4))


def test_storage_pressure_names_the_crossed_threshold(store):
    assert storage_pressure(store.path, TriggerConfig(max_rows=1)) is None  # no table yet
    store.add_many(["one", "two", "three"])
    assert storage_pressure(store.path, TriggerConfig(max_rows=3)) is None
    assert storage_pressure(store.path, TriggerConfig(max_rows=2)) == "rows 3 > 2"
    assert storage_pressure(store.path, TriggerConfig(max_short_fraction=0.5)) == "short tier 1.00 > 0.5"
    assert storage_pressure(store.path, TriggerConfig(max_bytes=10)).startswith("bytes ")
    assert storage_pressure(store.path, TriggerConfig()) is None


def test_the_pressure_trigger_runs_a_consolidation_within_one_interval(store):
    interval = 1.0
    texts = ["I drink coffee every morning.", "Coffee keeps me awake at work.", "I love a strong coffee."]
    store.add_many(["The train was late.", "I read a novel."])
    fired: list[float] = []
    reports = []
    done = threading.Event()

    def consolidate(reason: str) -> None:
        fired.append(time.monotonic())
        assert reason == "storage pressure: rows 5 > 4"
        reports.append(Consolidator(store, None, ConsolidationConfig(similarity_threshold=0.4)).run())
        done.set()

    daemon = ConsolidationDaemon(store.path, consolidate, TriggerConfig(max_rows=4, pressure_interval_s=interval,
                                                                        timezone="Europe/Berlin")).start()
    try:
        assert set(daemon.next_fire_times()) == {"nightly", "pressure"}
        time.sleep(1.5 * interval)
        assert not fired  # under the threshold: no run
        store.add_many(texts)
        crossed = time.monotonic()
        assert done.wait(10 * interval)
    finally:
        daemon.stop()
    assert fired[0] - crossed <= interval + 0.25  # the next check after the crossing (plus its own cost)
    (report,) = reports
    assert report.principles == 1 and report.archived == 3 and report.extractive == 1
