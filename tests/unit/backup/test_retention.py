"""The pure retention policy: restic's ``forget`` semantics plus the safety rules.

Cases are tables of creation times; each names exactly what must be kept. The two
worked examples of restic's documentation ("Removing snapshots according to a
policy") are reproduced over generated series.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup.catalog import BackupInfo, format_backup_id, parse_backup_id
from backup.errors import ConfigError
from backup.retention import FUTURE_REASON, RetentionPlan, RetentionPolicy, apply_policy, parse_duration
from backup.storage import LocalStorage, ObjectRef

SEOUL = ZoneInfo("Asia/Seoul")
KOLKATA = ZoneInfo("Asia/Kolkata")
NEW_YORK = ZoneInfo("America/New_York")
# A "now" after every backup of the tables below, so none of them is dated in the future.
LATER = datetime(2099, 1, 1, tzinfo=UTC)


# Retention touches no file: the backups it decides about only name their objects, in a
# directory that need not exist.
STORAGE = LocalStorage("/backups")


def ref(name: str) -> ObjectRef:
    return ObjectRef(STORAGE, name, STORAGE.describe(name))


def info(moment: datetime | None, prefix: str = "b", sequence: int = 1, backup_id: str | None = None) -> BackupInfo:
    if backup_id is None:
        assert moment is not None
        backup_id = format_backup_id(prefix, moment, sequence)
    return BackupInfo(
        backup_id=backup_id,
        prefix=prefix,
        archive=ref(f"{backup_id}.tar.gz"),
        manifest=ref(f"{backup_id}.manifest.json"),
        created_at=moment,
        size_bytes=100,
        file_count=1,
        compression="gz",
    )


def t(text: str) -> datetime:
    """'2026-05-10T03:00' read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def kept_times(plan: RetentionPlan) -> set[datetime]:
    return {d.backup.created_at for d in plan.keep if d.backup.created_at is not None}


def check_partition(plan: RetentionPlan, backups: Sequence[BackupInfo]) -> None:
    keep = [d.backup.backup_id for d in plan.keep]
    remove = [d.backup.backup_id for d in plan.remove]
    assert not set(keep) & set(remove)
    assert sorted(keep + remove) == sorted(b.backup_id for b in backups)
    assert all(d.keep for d in plan.keep) and not any(d.keep for d in plan.remove)


# -- the table ---------------------------------------------------------------------------

SEVERAL_A_DAY = [
    "2026-05-01T01:00",
    "2026-05-01T12:00",
    "2026-05-01T23:00",
    "2026-05-02T08:00",
    "2026-05-02T09:00",
    "2026-05-03T10:00",
]
# 2026-05-10 is a Sunday (ISO week 19), 2026-05-11 a Monday (ISO week 20).
AROUND_A_WEEK_BOUNDARY = ["2026-05-09T12:00", "2026-05-10T23:00", "2026-05-11T01:00", "2026-05-12T12:00"]
# 2025-12-28 is the Sunday of ISO week 2025-W52; 2025-12-29 (a Monday) starts 2026-W01.
AROUND_A_YEAR_BOUNDARY = ["2025-12-27T12:00", "2025-12-28T12:00", "2025-12-29T12:00", "2026-01-02T12:00"]
MONTHS = ["2026-01-15T12:00", "2026-01-31T23:00", "2026-02-01T00:30", "2026-02-20T12:00", "2026-03-01T12:00"]
YEARS = ["2023-12-31T23:59", "2024-06-01T12:00", "2024-12-31T22:00", "2025-01-01T00:10"]
HOURS = [
    "2026-05-01T10:05",
    "2026-05-01T10:55",
    "2026-05-01T11:00",
    "2026-05-01T11:30",
    "2026-05-01T12:59",
    "2026-05-01T13:00",
]
MIXED = [
    "2026-03-15T12:00",  # Sunday
    "2026-03-31T12:00",
    "2026-04-26T12:00",  # Sunday, ISO week 17
    "2026-04-30T12:00",  # Thursday, week 18, the last of April
    "2026-05-03T12:00",  # Sunday, week 18
    "2026-05-04T09:00",  # Monday, week 19
    "2026-05-04T18:00",
    "2026-05-05T12:00",  # Tuesday, week 19: the newest
]
# The same four instants fall on different days in UTC and in Seoul (UTC+9):
# A is May 9 in both; B and C are May 9 in UTC but May 10 in Seoul; D is May 8 in both.
A, B, C, D = "2026-05-09T13:00", "2026-05-09T16:00", "2026-05-09T20:00", "2026-05-08T12:00"
# Kolkata is UTC+5:30: 09:00Z, 10:10Z and 10:40Z are in hours 14, 15 and 16 there.
HALF_HOUR = ["2026-05-01T09:00", "2026-05-01T10:10", "2026-05-01T10:40"]

CASES: list[tuple[str, list[str], RetentionPolicy, tzinfo, list[str]]] = [
    (
        "keep-last-3",
        [f"2026-05-0{d}T03:00" for d in range(1, 7)],
        RetentionPolicy(keep_last=3),
        UTC,
        ["2026-05-04T03:00", "2026-05-05T03:00", "2026-05-06T03:00"],
    ),
    (
        "keep-last-more-than-there-are",
        ["2026-05-01T03:00", "2026-05-02T03:00"],
        RetentionPolicy(keep_last=10),
        UTC,
        ["2026-05-01T03:00", "2026-05-02T03:00"],
    ),
    # Measured from the newest backup (2020), not from now: the history does not expire.
    (
        "keep-within-from-the-newest",
        ["2019-12-31T12:00", "2020-01-08T11:00", "2020-01-08T13:00", "2020-01-09T12:00", "2020-01-10T12:00"],
        RetentionPolicy(keep_within=timedelta(days=2)),
        UTC,
        ["2020-01-08T13:00", "2020-01-09T12:00", "2020-01-10T12:00"],
    ),
    (
        "keep-within-36h",
        ["2020-01-08T23:00", "2020-01-09T01:00", "2020-01-10T12:00"],
        RetentionPolicy(keep_within=parse_duration("1d12h")),
        UTC,
        ["2020-01-09T01:00", "2020-01-10T12:00"],
    ),
    (
        "keep-daily-newest-of-each-day",
        SEVERAL_A_DAY,
        RetentionPolicy(keep_daily=2),
        UTC,
        ["2026-05-02T09:00", "2026-05-03T10:00"],
    ),
    (
        "keep-daily-3",
        SEVERAL_A_DAY,
        RetentionPolicy(keep_daily=3),
        UTC,
        ["2026-05-01T23:00", "2026-05-02T09:00", "2026-05-03T10:00"],
    ),
    # Count left at the oldest backup: it is kept too, though its day already has a keeper.
    (
        "keep-daily-oldest-kept-while-count-remains",
        SEVERAL_A_DAY,
        RetentionPolicy(keep_daily=5),
        UTC,
        ["2026-05-01T01:00", "2026-05-01T23:00", "2026-05-02T09:00", "2026-05-03T10:00"],
    ),
    (
        "keep-weekly-sunday-and-monday-are-different-iso-weeks",
        AROUND_A_WEEK_BOUNDARY,
        RetentionPolicy(keep_weekly=2),
        UTC,
        ["2026-05-10T23:00", "2026-05-12T12:00"],
    ),
    ("keep-weekly-1", AROUND_A_WEEK_BOUNDARY, RetentionPolicy(keep_weekly=1), UTC, ["2026-05-12T12:00"]),
    (
        "keep-weekly-iso-week-spans-new-year",
        AROUND_A_YEAR_BOUNDARY,
        RetentionPolicy(keep_weekly=2),
        UTC,
        ["2025-12-28T12:00", "2026-01-02T12:00"],
    ),
    (
        "keep-weekly-oldest-kept-while-count-remains",
        ["2026-05-04T09:00", "2026-05-04T10:00", "2026-05-06T12:00"],
        RetentionPolicy(keep_weekly=4),
        UTC,
        ["2026-05-04T09:00", "2026-05-06T12:00"],
    ),
    ("keep-monthly-2", MONTHS, RetentionPolicy(keep_monthly=2), UTC, ["2026-02-20T12:00", "2026-03-01T12:00"]),
    (
        "keep-monthly-3",
        MONTHS,
        RetentionPolicy(keep_monthly=3),
        UTC,
        ["2026-01-31T23:00", "2026-02-20T12:00", "2026-03-01T12:00"],
    ),
    ("keep-yearly-2", YEARS, RetentionPolicy(keep_yearly=2), UTC, ["2024-12-31T22:00", "2025-01-01T00:10"]),
    (
        "keep-yearly-5",
        YEARS,
        RetentionPolicy(keep_yearly=5),
        UTC,
        ["2023-12-31T23:59", "2024-12-31T22:00", "2025-01-01T00:10"],
    ),
    (
        "keep-hourly-3",
        HOURS,
        RetentionPolicy(keep_hourly=3),
        UTC,
        ["2026-05-01T11:30", "2026-05-01T12:59", "2026-05-01T13:00"],
    ),
    (
        "keep-hourly-oldest-kept-while-count-remains",
        HOURS,
        RetentionPolicy(keep_hourly=10),
        UTC,
        ["2026-05-01T10:05", "2026-05-01T10:55", "2026-05-01T11:30", "2026-05-01T12:59", "2026-05-01T13:00"],
    ),
    (
        "daily-weekly-monthly-combined",
        MIXED,
        RetentionPolicy(keep_daily=2, keep_weekly=2, keep_monthly=2),
        UTC,
        ["2026-04-30T12:00", "2026-05-03T12:00", "2026-05-04T18:00", "2026-05-05T12:00"],
    ),
    (
        "keep-last-and-keep-daily",
        SEVERAL_A_DAY,
        RetentionPolicy(keep_last=3, keep_daily=2),
        UTC,
        ["2026-05-02T08:00", "2026-05-02T09:00", "2026-05-03T10:00"],
    ),
    ("days-in-utc", [A, B, C, D], RetentionPolicy(keep_daily=2), UTC, [C, D]),
    ("days-in-seoul", [A, B, C, D], RetentionPolicy(keep_daily=2), SEOUL, [A, C]),
    ("hours-in-utc", HALF_HOUR, RetentionPolicy(keep_hourly=2), UTC, ["2026-05-01T09:00", "2026-05-01T10:40"]),
    ("hours-in-kolkata", HALF_HOUR, RetentionPolicy(keep_hourly=2), KOLKATA, ["2026-05-01T10:10", "2026-05-01T10:40"]),
]


@pytest.mark.parametrize(("times", "policy", "zone", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_policy_table(times: list[str], policy: RetentionPolicy, zone: tzinfo, expected: list[str]) -> None:
    backups = [info(t(text)) for text in times]

    plan = apply_policy(backups, policy, zone, prefix="b", now=LATER)

    assert kept_times(plan) == {t(text) for text in expected}
    check_partition(plan, backups)
    # Newest first, both lists.
    for decisions in (plan.keep, plan.remove):
        moments = [d.backup.created_at for d in decisions]
        assert moments == sorted(moments, reverse=True)  # type: ignore[type-var]


def test_input_order_does_not_matter() -> None:
    backups = [info(t(text)) for text in MIXED]
    policy = RetentionPolicy(keep_daily=2, keep_weekly=2, keep_monthly=2)
    forward = apply_policy(backups, policy, UTC, now=LATER)
    backward = apply_policy(list(reversed(backups)), policy, UTC, now=LATER)
    assert [d.backup.backup_id for d in forward.keep] == [d.backup.backup_id for d in backward.keep]
    assert [d.reasons for d in forward.keep] == [d.reasons for d in backward.keep]


def test_one_backup_carries_every_reason_that_keeps_it() -> None:
    backups = [info(t(text)) for text in MIXED]
    plan = apply_policy(backups, RetentionPolicy(keep_daily=2, keep_weekly=2, keep_monthly=2), UTC, now=LATER)

    reasons = {d.backup.created_at: d.reasons for d in plan.keep}
    newest = reasons[t("2026-05-05T12:00")]
    assert "newest backup (always kept)" in newest
    assert {"daily 1/2", "weekly 1/2", "monthly 1/2"} <= set(newest)
    assert reasons[t("2026-05-04T18:00")] == ("daily 2/2",)
    assert reasons[t("2026-05-03T12:00")] == ("weekly 2/2",)
    assert reasons[t("2026-04-30T12:00")] == ("monthly 2/2",)


def test_keep_within_and_keep_last_reasons() -> None:
    backups = [info(t("2026-05-01T00:00")), info(t("2026-05-02T00:00")), info(t("2026-05-03T00:00"))]
    plan = apply_policy(backups, RetentionPolicy(keep_last=1, keep_within=timedelta(hours=30)), UTC, now=LATER)
    reasons = {d.backup.created_at: d.reasons for d in plan.keep}
    assert reasons[t("2026-05-03T00:00")] == ("newest backup (always kept)", "last 1", "within 30h of the newest")
    assert reasons[t("2026-05-02T00:00")] == ("within 30h of the newest",)
    assert [d.backup.created_at for d in plan.remove] == [t("2026-05-01T00:00")]


# -- restic's documented examples ---------------------------------------------------------


def test_restic_example_one_backup_every_sunday_keep_daily_4() -> None:
    """12 Sunday backups, 2019-09-01 to 2019-11-17; --keep-daily 4 keeps the last four Sundays."""
    sundays = [datetime(2019, 9, 1, 11, 0, tzinfo=UTC) + timedelta(weeks=n) for n in range(12)]
    backups = [info(moment, prefix="work") for moment in sundays]

    plan = apply_policy(backups, RetentionPolicy(keep_daily=4), UTC, now=LATER)

    assert sorted(m.date() for m in kept_times(plan)) == [
        date(2019, 10, 27),
        date(2019, 11, 3),
        date(2019, 11, 10),
        date(2019, 11, 17),
    ]
    assert len(plan.remove) == 8


def _last_day_of_month(year: int, month: int) -> date:
    first_of_next = date(year + (month == 12), month % 12 + 1, 1)
    return first_of_next - timedelta(days=1)


def test_restic_example_a_century_of_daily_backups() -> None:
    """One backup a day for 100 years, ``--keep-daily 7 --keep-weekly 5 --keep-monthly 12
    --keep-yearly 75``: the 7 newest days, 4 more week ends (the dailies include one),
    11 more month ends, and year ends back to 75 years (one is already a month end)."""
    last = date(2026, 5, 17)  # a Sunday, as in the documentation's arithmetic
    first = date(1926, 5, 18)
    series = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    backups = [info(datetime.combine(day, datetime.min.time(), tzinfo=UTC).replace(hour=12)) for day in series]

    plan = apply_policy(
        backups, RetentionPolicy(keep_daily=7, keep_weekly=5, keep_monthly=12, keep_yearly=75), UTC, now=LATER
    )

    dailies = {last - timedelta(days=n) for n in range(7)}
    week_ends = {last - timedelta(weeks=n) for n in range(5)}
    months = [(2026, 5 - n) if n < 5 else (2025, 17 - n) for n in range(12)]
    month_ends = {last} | {_last_day_of_month(y, m) for y, m in months[1:]}
    year_ends = {last} | {date(year, 12, 31) for year in range(2025, 2025 - 74, -1)}
    expected = dailies | week_ends | month_ends | year_ends
    kept = {m.date() for m in kept_times(plan)}
    assert kept == expected
    assert len(kept) == 7 + 4 + 11 + 73
    assert len(plan.keep) + len(plan.remove) == len(series)

    def having(label: str) -> set[date]:
        return {
            d.backup.created_at.date()
            for d in plan.keep
            if d.backup.created_at and any(r.startswith(label) for r in d.reasons)
        }

    assert having("daily") == dailies
    assert having("weekly") == week_ends and len(week_ends - dailies) == 4
    assert having("monthly") == month_ends and len(month_ends - dailies - week_ends) == 11
    assert having("yearly") == year_ends and len(year_ends) == 75


# -- safety --------------------------------------------------------------------------------


def test_the_newest_is_kept_and_says_so() -> None:
    backups = [info(t("2026-05-01T00:00")), info(t("2026-05-03T00:00")), info(t("2026-05-02T00:00"))]
    plan = apply_policy(backups, RetentionPolicy(keep_within=timedelta(hours=1)), UTC, now=LATER)
    assert [d.backup.created_at for d in plan.keep] == [t("2026-05-03T00:00")]
    assert plan.keep[0].reasons[0] == "newest backup (always kept)"


def test_same_second_duplicates_the_later_sequence_is_the_newest() -> None:
    """Backups started in the same second get ``-2``, ``-3``...: the highest is the newest."""
    moment = t("2026-05-01T03:00")
    backups = [info(moment, sequence=n) for n in (1, 2, 3, 10)]

    plan = apply_policy(backups, RetentionPolicy(keep_last=1), UTC, now=LATER)

    assert [d.backup.backup_id for d in plan.keep] == ["b_20260501_030000-10"]
    assert [d.backup.backup_id for d in plan.remove] == [
        "b_20260501_030000-3",
        "b_20260501_030000-2",
        "b_20260501_030000",
    ]


@pytest.mark.parametrize(
    "policy",
    [RetentionPolicy(), RetentionPolicy(keep_last=0, keep_daily=0, keep_within=None)],
    ids=["default", "all-zero"],
)
def test_an_empty_policy_is_refused(policy: RetentionPolicy) -> None:
    with pytest.raises(ConfigError, match="keeps nothing"):
        apply_policy([info(t("2026-05-01T00:00"))], policy, UTC, now=LATER)
    with pytest.raises(ConfigError):
        apply_policy([], policy, UTC, now=LATER)


COUNTS = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"]


@pytest.mark.parametrize("name", COUNTS)
def test_negative_counts_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        RetentionPolicy(**{name: -1})  # type: ignore[arg-type]


@pytest.mark.parametrize("within", [timedelta(0), timedelta(hours=-1)])
def test_non_positive_keep_within_is_refused(within: timedelta) -> None:
    with pytest.raises(ConfigError, match="keep_within"):
        RetentionPolicy(keep_within=within)


def test_a_policy_cannot_be_changed_after_it_is_checked() -> None:
    """A policy is checked when it is made: were it mutable, a negative count could be
    set afterwards, past the check, and the scheduler holds one policy for all its runs.
    A policy is a value: equal ones hash alike, so they can key a mapping or a set."""
    import dataclasses

    policy = RetentionPolicy(keep_daily=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.keep_daily = -1  # type: ignore[misc]
    assert policy.keep_daily == 7
    assert {policy, RetentionPolicy(keep_daily=7)} == {policy}


def test_from_days() -> None:
    assert RetentionPolicy.from_days(7) == RetentionPolicy(keep_within=timedelta(days=7))
    with pytest.raises(ConfigError, match="retention_days"):
        RetentionPolicy.from_days(0)


def test_only_the_prefix_is_considered() -> None:
    mine = [info(t("2026-05-01T00:00"), "db"), info(t("2026-05-02T00:00"), "db")]
    theirs = [info(t("2026-04-01T00:00"), "web"), info(t("2026-05-03T00:00"), "web")]

    plan = apply_policy(mine + theirs, RetentionPolicy(keep_last=1), UTC, prefix="db", now=LATER)

    assert [d.backup.backup_id for d in plan.keep] == [mine[1].backup_id]
    assert [d.backup.backup_id for d in plan.remove] == [mine[0].backup_id]
    assert set(plan.ignored) == set(theirs)


def test_without_a_prefix_everything_is_one_group() -> None:
    backups = [info(t("2026-05-01T00:00"), "db"), info(t("2026-05-02T00:00"), "web")]
    plan = apply_policy(backups, RetentionPolicy(keep_last=1), UTC, now=LATER)
    assert [d.backup.prefix for d in plan.keep] == ["web"]
    assert plan.ignored == ()


def test_backups_of_unknown_time_are_kept_and_use_no_count() -> None:
    undated = info(None, backup_id="b_imported")
    dated = [info(t("2026-05-01T00:00")), info(t("2026-05-02T00:00"))]

    plan = apply_policy([undated, *dated], RetentionPolicy(keep_last=1), UTC, now=LATER)

    assert {d.backup.backup_id for d in plan.keep} == {undated.backup_id, dated[1].backup_id}
    assert [d.backup.backup_id for d in plan.remove] == [dated[0].backup_id]
    undated_reasons = next(d.reasons for d in plan.keep if d.backup is undated)
    assert undated_reasons and "unknown" in undated_reasons[0]


def test_describe_and_to_dict() -> None:
    policy = RetentionPolicy(keep_within=timedelta(days=7), keep_daily=7, keep_weekly=4)
    assert policy.describe() == "keep-within 7d, keep-daily 7, keep-weekly 4"
    assert RetentionPolicy(keep_within=timedelta(hours=36)).describe() == "keep-within 36h"
    backups = [info(t("2026-05-01T00:00")), info(t("2026-05-02T00:00"))]
    data = apply_policy(backups, RetentionPolicy(keep_last=1), UTC, now=LATER).to_dict()
    assert data["policy"] == "keep-last 1"
    assert data["keep"] == [
        {
            "backup_id": "b_20260502_000000",
            "created_at": "2026-05-02T00:00:00+00:00",
            "archive_path": "/backups/b_20260502_000000.tar.gz",
            "reasons": ["newest backup (always kept)", "last 1"],
        }
    ]
    removed = data["remove"]
    assert isinstance(removed, list)
    assert [row["backup_id"] for row in removed] == ["b_20260501_000000"]


# -- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("36h", timedelta(hours=36)),
        ("1d12h", timedelta(hours=36)),
        ("1w2d3h", timedelta(days=9, hours=3)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "7", "d", "7x", "-1d", "1.5d", "7d 2h", "h7", "12h1d", "7 days"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration(text)


# -- property ---------------------------------------------------------------------------------

PREFIXES = ("a", "b", "c")
BASE = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def backup_lists(draw: st.DrawFn) -> list[BackupInfo]:
    count = draw(st.integers(0, 30))
    seconds = st.one_of(st.sampled_from([0, 1, 3600]), st.integers(0, 120 * 86400))
    backups: list[BackupInfo] = []
    sequences: dict[tuple[str, int], int] = {}
    for index in range(count):
        prefix = draw(st.sampled_from(PREFIXES))
        if draw(st.integers(0, 12)) == 0:
            backups.append(info(None, prefix, backup_id=f"{prefix}_imported_{index}"))
            continue
        offset = draw(seconds)
        sequence = sequences[(prefix, offset)] = sequences.get((prefix, offset), 0) + 1
        backups.append(info(BASE + timedelta(seconds=offset), prefix, sequence))
    return draw(st.permutations(backups))


policies = st.builds(
    RetentionPolicy,
    keep_within=st.one_of(st.none(), st.integers(1, 2000).map(lambda h: timedelta(hours=h))),
    keep_last=st.integers(0, 4),
    keep_hourly=st.integers(0, 4),
    keep_daily=st.integers(0, 4),
    keep_weekly=st.integers(0, 4),
    keep_monthly=st.integers(0, 4),
    keep_yearly=st.integers(0, 4),
).filter(lambda p: not p.is_empty())


def _order(backup: BackupInfo) -> tuple[datetime, int]:
    parsed = parse_backup_id(backup.backup_id)
    assert backup.created_at is not None and parsed is not None
    return backup.created_at, parsed[2]


@settings(max_examples=300, deadline=None)
@given(
    backups=backup_lists(),
    policy=policies,
    zone=st.sampled_from([UTC, SEOUL, NEW_YORK, KOLKATA]),
    prefix=st.sampled_from(PREFIXES),
)
def test_property_partition_and_newest_kept(
    backups: list[BackupInfo], policy: RetentionPolicy, zone: tzinfo, prefix: str
) -> None:
    plan = apply_policy(backups, policy, zone, prefix=prefix, now=LATER)

    mine = [b for b in backups if b.prefix == prefix]
    others = [b for b in backups if b.prefix != prefix]
    kept = [d.backup.backup_id for d in plan.keep]
    removed = [d.backup.backup_id for d in plan.remove]
    # keep and remove partition exactly this prefix's backups; nothing else is touched.
    assert sorted(kept + removed) == sorted(b.backup_id for b in mine)
    assert len(set(kept + removed)) == len(kept) + len(removed)
    assert sorted(b.backup_id for b in plan.ignored) == sorted(b.backup_id for b in others)
    # The newest (later sequence wins within a second) is always kept; so is every undated one.
    dated = [b for b in mine if b.created_at is not None]
    if dated:
        assert max(dated, key=_order).backup_id in kept
    assert {b.backup_id for b in mine if b.created_at is None} <= set(kept)
    # keep_last keeps at least that many of the newest.
    newest_first = sorted(dated, key=_order, reverse=True)
    assert {b.backup_id for b in newest_first[: policy.keep_last]} <= set(kept)


def test_keep_within_is_strictly_newer_than_the_cut_off() -> None:
    """restic's rule: a backup exactly D older than the newest is outside "within D"."""
    newest = datetime(2026, 5, 3, 3, 0, tzinfo=UTC)
    backups = [info(newest - timedelta(days=1)), info(newest - timedelta(days=1, seconds=-1)), info(newest)]
    plan = apply_policy(backups, RetentionPolicy(keep_within=timedelta(days=1)), UTC, prefix="b", now=LATER)
    assert sorted(d.backup.created_at for d in plan.keep) == [
        newest - timedelta(hours=23, minutes=59, seconds=59),
        newest,
    ]
    assert [d.backup.created_at for d in plan.remove] == [newest - timedelta(days=1)]


@pytest.mark.parametrize("text", ["6m", "1w2d3h4m", "90m", "0d", "0h"])
def test_parse_duration_refuses_ambiguous_or_zero(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration(text)


# -- backups dated in the future (a clock that ran ahead) ---------------------------------------

# Now is Sunday 2026-05-10 12:00 UTC (ISO week 19). The real backups ran daily at 03:00
# from April 1, the last one this morning; two more were made while the clock was wrong:
# one dated a year ahead (a dead RTC battery before NTP synced) and one five minutes ahead.
CLOCK_NOW = t("2026-05-10T12:00")
REAL_DAYS = [date(2026, 4, 1) + timedelta(days=n) for n in range(40)]
AHEAD = [t("2027-05-10T03:00"), t("2026-05-10T12:05")]


def real(month: int, day: int) -> datetime:
    return datetime(2026, month, day, 3, 0, tzinfo=UTC)


FUTURE_CASES: list[tuple[str, RetentionPolicy, list[datetime]]] = [
    ("keep-last", RetentionPolicy(keep_last=3), [real(5, 8), real(5, 9), real(5, 10)]),
    # Within 7 days of the newest backup not after now (May 10, 03:00), strictly.
    ("keep-within", RetentionPolicy(keep_within=timedelta(days=7)), [real(5, d) for d in range(4, 11)]),
    ("keep-hourly", RetentionPolicy(keep_hourly=2), [real(5, 9), real(5, 10)]),
    ("keep-daily", RetentionPolicy(keep_daily=3), [real(5, 8), real(5, 9), real(5, 10)]),
    ("keep-weekly", RetentionPolicy(keep_weekly=2), [real(5, 3), real(5, 10)]),
    ("keep-monthly", RetentionPolicy(keep_monthly=2), [real(4, 30), real(5, 10)]),
    # Count left at the oldest backup: it is kept too.
    ("keep-yearly", RetentionPolicy(keep_yearly=2), [real(4, 1), real(5, 10)]),
    (
        "daily-weekly-monthly",
        RetentionPolicy(keep_daily=2, keep_weekly=2, keep_monthly=2),
        [real(4, 30), real(5, 3), real(5, 9), real(5, 10)],
    ),
    ("last-and-within", RetentionPolicy(keep_last=1, keep_within=timedelta(days=2)), [real(5, 9), real(5, 10)]),
    (
        "everything",
        RetentionPolicy(
            keep_within=timedelta(hours=30),
            keep_last=2,
            keep_hourly=1,
            keep_daily=3,
            keep_weekly=1,
            keep_monthly=1,
            keep_yearly=1,
        ),
        [real(5, 8), real(5, 9), real(5, 10)],
    ),
]


@pytest.mark.parametrize(("policy", "expected"), [c[1:] for c in FUTURE_CASES], ids=[c[0] for c in FUTURE_CASES])
def test_future_dated_backups_are_set_aside_under_every_rule(policy: RetentionPolicy, expected: list[datetime]) -> None:
    """Backups dated after now are kept, say why, and count towards no rule: the real
    history is kept exactly as the policy says, as if they did not exist."""
    reals = [info(datetime.combine(day, datetime.min.time(), tzinfo=UTC).replace(hour=3)) for day in REAL_DAYS]
    ahead = [info(moment) for moment in AHEAD]

    plan = apply_policy(ahead + reals, policy, UTC, prefix="b", now=CLOCK_NOW)

    assert kept_times(plan) == set(expected) | set(AHEAD)
    check_partition(plan, ahead + reals)
    assert [d.backup for d in plan.future] == ahead  # newest first
    assert all(d.reasons == (FUTURE_REASON,) for d in plan.future)
    assert plan.keep[: len(ahead)] == plan.future
    reasons = {d.backup.created_at: d.reasons for d in plan.keep}
    assert reasons[real(5, 10)][0] == "newest backup (always kept)"
    without = apply_policy(reals, policy, UTC, prefix="b", now=CLOCK_NOW)
    assert plan.keep[len(ahead) :] == without.keep
    assert plan.remove == without.remove


def test_keep_within_is_measured_from_the_newest_backup_not_after_now() -> None:
    """One backup dated a year ahead no longer makes every real backup look a year old."""
    reals = [info(t("2026-05-03T03:00")), info(t("2026-05-09T03:00")), info(t("2026-05-10T03:00"))]
    ahead = info(t("2027-05-10T03:00"))

    plan = apply_policy([*reals, ahead], RetentionPolicy(keep_within=timedelta(days=7)), UTC, now=CLOCK_NOW)

    assert [d.backup for d in plan.keep] == [ahead, reals[2], reals[1]]
    assert [d.backup for d in plan.remove] == [reals[0]]
    assert plan.keep[1].reasons == ("newest backup (always kept)", "within 7d of the newest")


def test_only_future_dated_backups_are_all_kept() -> None:
    ahead = [info(t("2027-01-01T00:00")), info(t("2027-01-02T00:00"))]
    plan = apply_policy(ahead, RetentionPolicy(keep_last=1), UTC, now=CLOCK_NOW)
    assert [d.backup for d in plan.keep] == [ahead[1], ahead[0]]
    assert [d.backup for d in plan.future] == [ahead[1], ahead[0]]
    assert plan.remove == ()


def test_a_backup_made_exactly_now_is_not_in_the_future() -> None:
    backups = [info(t("2026-05-09T12:00")), info(CLOCK_NOW)]
    plan = apply_policy(backups, RetentionPolicy(keep_last=1), UTC, now=CLOCK_NOW)
    assert plan.future == ()
    assert [d.backup for d in plan.keep] == [backups[1]]
    assert plan.keep[0].reasons == ("newest backup (always kept)", "last 1")


def test_future_dated_backups_of_another_prefix_are_ignored_not_kept() -> None:
    theirs = info(t("2027-01-01T00:00"), prefix="web")
    mine = info(t("2026-05-01T00:00"), prefix="db")
    plan = apply_policy([theirs, mine], RetentionPolicy(keep_last=1), UTC, prefix="db", now=CLOCK_NOW)
    assert plan.future == ()
    assert plan.ignored == (theirs,)


def test_future_dated_backups_in_to_dict() -> None:
    ahead = info(t("2027-05-10T03:00"))
    plan = apply_policy([info(t("2026-05-10T03:00")), ahead], RetentionPolicy(keep_last=1), UTC, now=CLOCK_NOW)
    row = {
        "backup_id": "b_20270510_030000",
        "created_at": "2027-05-10T03:00:00+00:00",
        "archive_path": "/backups/b_20270510_030000.tar.gz",
        "reasons": [FUTURE_REASON],
    }
    data = plan.to_dict()
    assert data["future"] == [row]
    assert isinstance(data["keep"], list) and data["keep"][0] == row


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        apply_policy([info(t("2026-05-10T03:00"))], RetentionPolicy(keep_last=1), UTC, now=datetime(2026, 5, 10))


@st.composite
def future_backups(draw: st.DrawFn, now: datetime) -> list[BackupInfo]:
    """Backups dated after ``now``: seconds to ten years ahead, with ids distinct from
    ``backup_lists``' (sequences from 100 up)."""
    ahead = st.one_of(st.sampled_from([1, 60, 86400, 365 * 86400]), st.integers(1, 10 * 365 * 86400))
    moments = draw(st.lists(ahead, max_size=6))
    prefixes = draw(st.lists(st.sampled_from(PREFIXES), min_size=len(moments), max_size=len(moments)))
    return [
        info(now + timedelta(seconds=offset), prefix, 100 + index)
        for index, (offset, prefix) in enumerate(zip(moments, prefixes, strict=True))
    ]


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    backups=backup_lists(),
    policy=policies,
    zone=st.sampled_from([UTC, SEOUL, NEW_YORK, KOLKATA]),
    prefix=st.sampled_from(PREFIXES),
    now_offset=st.integers(0, 130 * 86400),
)
def test_property_future_dated_backups_change_nothing_else(
    data: st.DataObject,
    backups: list[BackupInfo],
    policy: RetentionPolicy,
    zone: tzinfo,
    prefix: str,
    now_offset: int,
) -> None:
    """Adding backups dated after now never changes the decision for any other backup,
    and every one of them (of the prefix) is kept, as dated in the future."""
    now = BASE + timedelta(seconds=now_offset)
    extra = data.draw(future_backups(now))
    combined = data.draw(st.permutations(backups + extra))

    before = apply_policy(backups, policy, zone, prefix=prefix, now=now)
    after = apply_policy(combined, policy, zone, prefix=prefix, now=now)

    def decisions(plan: RetentionPlan) -> dict[str, tuple[str, ...]]:
        return {d.backup.backup_id: d.reasons for d in plan.keep + plan.remove}

    added = {b.backup_id for b in extra}
    assert {k: v for k, v in decisions(after).items() if k not in added} == decisions(before)
    mine = {b.backup_id for b in extra if b.prefix == prefix}
    assert {d.backup.backup_id for d in after.keep if d.reasons == (FUTURE_REASON,)} >= mine
    assert {d.backup.backup_id for d in after.future} == {
        b.backup_id for b in backups + extra if b.prefix == prefix and b.created_at is not None and b.created_at > now
    }
    assert all(d.reasons == (FUTURE_REASON,) for d in after.future)


class _NoOffset(tzinfo):
    """A time zone that does not know its offset: the time is as naive as none at all."""

    def utcoffset(self, moment: datetime | None) -> None:
        return None

    def dst(self, moment: datetime | None) -> None:
        return None


@pytest.mark.parametrize("moment", [datetime(2026, 3, 1), datetime(2026, 3, 1, tzinfo=_NoOffset())])
def test_a_now_without_an_offset_is_refused(moment: datetime) -> None:
    with pytest.raises(ValueError, match="aware now"):
        apply_policy([], RetentionPolicy(keep_last=1), UTC, now=moment)


def test_an_id_without_a_sequence_counts_as_the_first_claim_of_its_second() -> None:
    """A backup whose id is not one of ours (a foreign name our manifest vouches for)
    is the first claim of its second: a "-2" claim of that second is newer, whatever
    the names' order as text."""
    moment = datetime(2026, 3, 1, 3, tzinfo=UTC)
    claimed = info(moment, prefix="b", sequence=2)
    foreign = info(moment, prefix="b", backup_id="zzz-manual")
    for backups in ([claimed, foreign], [foreign, claimed]):
        plan = apply_policy(backups, RetentionPolicy(keep_last=1), UTC, now=moment + timedelta(days=1))
        assert [d.backup.backup_id for d in plan.keep] == [claimed.backup_id]
