"""Wearable streams: Observations with ``valueSampledData`` -> ``signal_window``.

**Wearables** (``valueSampledData``, FHIR R4 SampledData: value = origin + factor x datum, ``period`` ms
between samples, ``dimensions`` interleaved, ``E``/``L``/``U`` not numbers) -> ``signal_window`` rows of
:data:`node.fhir_profile.WEARABLE_WINDOW_SECONDS` from ``effectivePeriod.start``: n, mean, sample SD,
min, max of the valid samples, id ``row_id("Observation", id, "window", k)`` (dimension d>0: part
``("window", d, k)``).  Windows without a valid sample give no row.
"""

from __future__ import annotations

import datetime as dt
import math
from itertools import groupby, repeat
from operator import add, floordiv, mul

from node import fhir_profile as fp
from node.ingest.contract import Row, Unmappable
from node.ingest.mappers.values import BAD_VALUE, first_code, period, reference, required_datetime


def _start(resource: dict) -> dt.datetime:
    start, _end = period(resource.get("effectivePeriod"))
    day, moment = required_datetime(resource, start, resource.get("effectiveDateTime"),
                                    resource.get("effectiveInstant"), what="effective start")
    return moment or dt.datetime.combine(day, dt.time())


def _windows(sampled: dict, what: str) -> dict[tuple[int, int], list[float]]:
    """(dimension, window index) -> valid sample values."""
    try:
        period_ms = float(sampled["period"])
        dims = int(sampled.get("dimensions") or 1)
        origin = float((sampled.get("origin") or {}).get("value") or 0.0)
        factor = float(sampled.get("factor", 1.0))
    except (KeyError, TypeError, ValueError):
        raise Unmappable(BAD_VALUE, f"{what}: SampledData needs numeric period, dimensions, origin") from None
    if not (period_ms > 0 and dims > 0):
        raise Unmappable(BAD_VALUE, f"{what}: SampledData period {period_ms} and dimensions {dims} must be positive")
    window_ms = fp.WEARABLE_WINDOW_SECONDS * 1000.0
    tokens = (sampled.get("data") or "").split()
    if dims == 1 and math.isfinite(len(tokens) * period_ms):  # (else a window index overflows: the rule below)
        try:
            numbers = list(map(float, tokens))
        except ValueError:  # E / L / U, or not a number: the sample-by-sample rule below says which
            pass
        else:
            return _windows_of_numbers(numbers, origin, factor, period_ms, window_ms)
    out: dict[tuple[int, int], list[float]] = {}
    for i, token in enumerate(tokens):
        if token in ("E", "L", "U"):  # error / below / above the detection limit: not a value
            continue
        try:
            value = origin + factor * float(token)
        except ValueError:
            raise Unmappable(BAD_VALUE, f"{what}: sample {i} {token!r} is not a number") from None
        if not math.isfinite(value):
            continue
        key = (i % dims, int((i // dims) * period_ms // window_ms))
        bucket = out.get(key)
        if bucket is None:
            out[key] = [value]
        else:
            bucket.append(value)
    return out


def _windows_of_numbers(numbers: list[float], origin: float, factor: float, period_ms: float,
                        window_ms: float) -> dict[tuple[int, int], list[float]]:
    """:func:`_windows` of one dimension whose every sample is a number: the same values and windows,
    computed a window's run of samples at a time (a wearable stream has hundreds of samples)."""
    # origin + factor * x and int(i * period_ms // window_ms), each sample, in C (operator / map)
    values = list(map(add, repeat(origin), map(mul, repeat(factor), numbers)))
    windows = map(int, map(floordiv, map(mul, range(len(values)), repeat(period_ms)), repeat(window_ms)))
    out: dict[tuple[int, int], list[float]] = {}
    start = 0
    for k, run in groupby(windows):
        end = start + len(list(run))
        valid = list(filter(math.isfinite, values[start:end]))
        start = end
        if valid:
            bucket = out.get((0, k))
            if bucket is None:
                out[(0, k)] = valid
            else:  # a window met again later (not with a positive period, but the rule allows it)
                bucket.extend(valid)
    return out


def _summary(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def map_sampled_data(resource: dict, ctx) -> list[Row]:
    """``valueSampledData`` (and component streams) -> ``signal_window`` rows."""
    person_id = ctx.person_id(reference(resource.get("subject")))
    start = _start(resource)
    device_id = ctx.reference_id((resource.get("device") or {}).get("reference"), "device_exposure")
    streams = []
    if "valueSampledData" in resource:
        streams.append((resource.get("code"), resource["valueSampledData"], ()))
    for i, comp in enumerate(resource.get("component") or ()):
        if "valueSampledData" in comp:
            streams.append((comp.get("code"), comp["valueSampledData"], ("component", i)))
    rows = []
    for code, sampled, part in streams:
        signal = ctx.concept(code, "Measurement")
        origin = sampled.get("origin") or {}
        unit = ctx.unit(origin) if (origin.get("code") or origin.get("unit")) else None
        for (dim, k), values in sorted(_windows(sampled, f"Observation {resource.get('id')}").items()):
            window_part = ("window", k) if dim == 0 else ("window", dim, k)
            rows.append(Row("signal_window", {
                "signal_window_id": ctx.row_id("Observation", resource["id"], *part, *window_part),
                "person_id": person_id,
                "device_exposure_id": device_id,
                "signal_concept_id": signal.concept_id,
                "signal_source_value": (first_code(code) or "")[:255] or None,
                "window_start_datetime": start + dt.timedelta(seconds=k * fp.WEARABLE_WINDOW_SECONDS),
                "window_seconds": fp.WEARABLE_WINDOW_SECONDS,
                **_summary(values),
                "unit_concept_id": unit.concept_id if unit else None,
                "unit_source_value": (str(origin.get("code") or origin.get("unit") or ""))[:50] or None,
            }))
    return rows
