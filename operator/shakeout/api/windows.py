"""Time windows: when runs may execute (an Experiment's allowedWindows) and when none may
(the ChaosSwitch's blackoutWindows). Whether an instant falls in a window is decided in
engine/windows.py; this is only the shape the API server stores and checks."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, StringConstraints, model_validator
from pydantic.json_schema import JsonDict  # type: ignore[attr-defined]  # not in __all__

from shakeout.api.common import DNS_LABEL, Model, cel

# HH:MM, 00:00 to 23:59; endTime may also be 24:00 (the end of the day).
CLOCK_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
END_CLOCK_TIME = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
DATE = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
DateString = Annotated[str, StringConstraints(pattern=DATE, max_length=10)]


class Weekday(StrEnum):
    MONDAY = "Mon"
    TUESDAY = "Tue"
    WEDNESDAY = "Wed"
    THURSDAY = "Thu"
    FRIDAY = "Fri"
    SATURDAY = "Sat"
    SUNDAY = "Sun"


class TimeWindow(Model):
    """A recurring or dated span of local time in one time zone.

    An instant falls in the window when its local date is one of `dates` (if given), its
    local weekday one of `days` (if given), and its local time-of-day between `startTime`
    (inclusive) and `endTime` (exclusive), if given. An endTime at or before the startTime
    spans midnight: 22:00-06:00 covers the night that starts on each listed day. At least
    one of dates, days or startTime/endTime is given."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.dates) || has(self.days) || has(self.startTime)",
                    "give at least one of dates, days or startTime/endTime",
                ),
                cel(
                    "has(self.startTime) == has(self.endTime)",
                    "give both startTime and endTime, or neither",
                    fieldPath=".endTime",
                ),
            ]
        }
    )

    name: str = Field(
        max_length=63,
        pattern=DNS_LABEL,
        description="Name of the window, shown in every refusal or cancel it causes.",
    )
    time_zone: str = Field(
        default="UTC",
        max_length=64,
        description="IANA time zone the dates, days and times are read in, e.g. Europe/Berlin.",
    )
    dates: list[DateString] | None = Field(
        default=None,
        min_length=1,
        max_length=366,
        description=(
            "Calendar dates (YYYY-MM-DD, local) the window covers, such as holidays or a "
            "change freeze; unset: every date."
        ),
    )
    days: list[Weekday] | None = Field(
        default=None,
        min_length=1,
        max_length=7,
        description="Days of the week (Mon..Sun, local) the window covers; unset: every day.",
    )
    start_time: str | None = Field(
        default=None,
        pattern=CLOCK_TIME,
        description="Local time of day the window opens (HH:MM); unset: the whole day.",
    )
    end_time: str | None = Field(
        default=None,
        pattern=END_CLOCK_TIME,
        description=(
            "Local time of day the window closes (HH:MM, exclusive; 24:00 is midnight). "
            "At or before startTime: the window spans midnight."
        ),
    )

    @model_validator(mode="after")
    def _usable(self) -> TimeWindow:
        if self.dates is None and self.days is None and self.start_time is None:
            raise ValueError("give at least one of dates, days or startTime/endTime")
        if (self.start_time is None) != (self.end_time is None):
            raise ValueError("give both startTime and endTime, or neither")
        if (error := time_zone_error(self.time_zone)) is not None:
            raise ValueError(error)
        return self


def time_zone_error(name: str) -> str | None:
    """Why `name` is not an IANA time zone this machine knows, or None."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}"
    return None


def unique_window_names(field: str) -> JsonDict:
    """The CEL rule that keeps window names unique in a list field (the API server's)."""
    return cel(
        f"!has(self.{field}) || self.{field}.all(w, self.{field}.exists_one(v, v.name == w.name))",
        _NOT_UNIQUE.format(field=field),
        fieldPath=f".{field}",
    )


def require_unique_names(windows: Sequence[TimeWindow], field: str) -> None:
    """The same rule in the models (webhooks, the operator's own reading)."""
    names = [w.name for w in windows]
    if len(set(names)) != len(names):
        raise ValueError(_NOT_UNIQUE.format(field=field))


_NOT_UNIQUE = "{field}: window names must be unique"
