"""Every message and HTTP body survives JSON encode -> decode unchanged.

Values are drawn by a builder that reads each Struct's msgspec constraints (patterns,
lengths, bounds, literals) through msgspec.inspect, since `st.from_type` knows none of them.
Decoding validates, so a draw that broke a constraint would fail here too: the test pins both
that the shapes round-trip and that every value the constraints describe is accepted.
"""

from __future__ import annotations

import importlib
import pkgutil
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contracts
from contracts.http import BODIES
from contracts.money import Money
from contracts.subjects import MESSAGES, REPLIES

# Lists in real bodies hold up to hundreds of items; a few are enough to exercise them.
LIST_SIZE_MAX = 3
OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]

SHAPES: list[type[msgspec.Struct]] = [*MESSAGES.values(), *REPLIES.values(), *BODIES, Money]


def strategy_for(info: mi.Type) -> st.SearchStrategy[Any]:
    """A strategy for valid values of one msgspec type, honouring its constraints."""
    match info:
        case mi.Metadata():
            return strategy_for(info.type)
        case mi.StructType():
            return _struct(info)
        case mi.UnionType():
            return st.one_of([strategy_for(member) for member in info.types])
        case mi.NoneType():
            return st.none()
        case mi.BoolType():
            return st.booleans()
        case mi.IntType():
            return _integers(info)
        case mi.StrType():
            return _strings(info)
        case mi.LiteralType():
            return st.sampled_from(info.values)
        case mi.UUIDType():
            return st.uuids()
        case mi.DateType():
            return st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1))
        case mi.DateTimeType():
            return st.datetimes(
                min_value=datetime(2000, 1, 1),
                max_value=datetime(2100, 1, 1),
                timezones=st.sampled_from(OFFSETS),
            )
        case mi.ListType():
            return st.lists(
                strategy_for(info.item_type),
                min_size=info.min_length or 0,
                max_size=min(info.max_length or LIST_SIZE_MAX, LIST_SIZE_MAX),
            )
        case mi.DictType():
            return st.dictionaries(
                strategy_for(info.key_type),
                strategy_for(info.value_type),
                min_size=info.min_length or 0,
                max_size=min(info.max_length or LIST_SIZE_MAX, LIST_SIZE_MAX),
            )
        case mi.AnyType():
            return _json_values()
    raise NotImplementedError(f"no strategy for {info!r}: extend strategy_for")


def _struct(info: mi.StructType) -> st.SearchStrategy[Any]:
    required = {f.name: strategy_for(f.type) for f in info.fields if f.required}
    optional = {f.name: strategy_for(f.type) for f in info.fields if not f.required}
    kwargs = st.fixed_dictionaries(required, optional=optional)
    # Structs with cross-field rules (__post_init__) refuse some combinations; drop those.
    return kwargs.map(lambda kw: _construct(info.cls, kw)).filter(lambda v: v is not None)


def _construct(cls: type[msgspec.Struct], kwargs: dict[str, Any]) -> msgspec.Struct | None:
    try:
        return cls(**kwargs)
    except ValueError:
        return None


def _integers(info: mi.IntType) -> st.SearchStrategy[int]:
    low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
    high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
    return st.integers(min_value=low, max_value=high)


def _strings(info: mi.StrType) -> st.SearchStrategy[str]:
    low, high = info.min_length or 0, info.max_length
    if info.pattern is None:
        return st.text(min_size=low, max_size=min(high, 40) if high is not None else 40)
    return st.from_regex(info.pattern, fullmatch=True).filter(
        lambda s: low <= len(s) and (high is None or len(s) <= high)
    )


def _json_values() -> st.SearchStrategy[Any]:
    # No floats: 0.1 + a round trip is still 0.1 in msgspec, but NaN never equals itself.
    scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    )


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_encode_then_decode_returns_an_equal_value(shape: type[msgspec.Struct], data: st.DataObject) -> None:
    value = data.draw(strategy_for(mi.type_info(shape)), label=shape.__name__)

    encoded = msgspec.json.encode(value)
    decoded = msgspec.json.decode(encoded, type=shape)

    assert decoded == value
    assert msgspec.json.encode(decoded) == encoded


def _structs_within(info: mi.Type) -> set[type[msgspec.Struct]]:
    match info:
        case mi.Metadata():
            return _structs_within(info.type)
        case mi.StructType():
            nested = [_structs_within(field.type) for field in info.fields]
            return {info.cls}.union(*nested)
        case mi.UnionType():
            return set().union(*(_structs_within(member) for member in info.types))
        case mi.ListType():
            return _structs_within(info.item_type)
        case mi.DictType():
            return _structs_within(info.key_type) | _structs_within(info.value_type)
    return set()


def test_every_struct_of_the_contracts_package_is_round_tripped() -> None:
    defined = {
        value
        for module_info in pkgutil.walk_packages(contracts.__path__, "contracts.")
        for value in vars(importlib.import_module(module_info.name)).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == module_info.name
    }
    covered = set().union(*(_structs_within(mi.type_info(shape)) for shape in SHAPES))
    assert defined - covered == set()
    names = [struct.__name__ for struct in defined]
    assert len(names) == len(set(names)), "two structs share a name in the exported schemas"
