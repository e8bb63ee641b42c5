"""Per-request limits: the request's value where it sets one, the server's default
otherwise, and a clear error naming the field and the allowed range when it is outside."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from execbox.config import LimitRange
from execbox.jobs import Limits
from execbox.runtimes import InvalidJob


def resolve(
    rng: LimitRange,
    requested: Mapping[str, float | int | None],
    names: Mapping[str, str] | None = None,
    scale: Mapping[str, float] | None = None,
) -> Limits:
    """Build Limits from `requested` (keys are Limits fields; None means "not set").

    `names` maps a Limits field to the request's own field name, and `scale` converts the
    request's unit to ours (Faber sends nanoseconds), so errors speak the client's terms.
    """
    names = names or {}
    scale = scale or {}
    values: dict[str, float | int] = {}
    for key, value in requested.items():
        if value is None:
            continue
        if key not in Limits.__dataclass_fields__:
            raise KeyError(key)
        factor = scale.get(key, 1)
        lo, hi = getattr(rng.minimum, key), getattr(rng.maximum, key)
        converted = value * factor
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not lo <= converted <= hi
        ):
            allowed = f"{_fmt(lo / factor)}..{_fmt(hi / factor)}"
            raise InvalidJob(
                f"{names.get(key, key)}: {value!r} is outside the allowed range {allowed}"
            )
        default = getattr(rng.default, key)
        values[key] = type(default)(converted)
    return dataclasses.replace(rng.default, **values)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
