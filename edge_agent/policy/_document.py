"""The policy document format (TOML, signed as a whole) and its validation.

See docs/POLICY.md for the reference. Parsing is strict: unknown keys, wrong types and
inconsistent settings are refused with a :class:`PolicyError` naming the key, because a
policy the box misreads is worse than no policy.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_agent._tomlreader import TableReader
from edge_agent.errors import ConfigError, PolicyError
from edge_agent.policy._model import (
    DATA_CLASSES,
    Budgets,
    ClientRule,
    EffectivePolicy,
    ModelPrice,
    TimeWindow,
    WindowSet,
    class_rank,
)

__all__ = ["PROVIDER_SELECTIONS", "PolicyDocument", "parse_policy", "parse_windows"]

PROVIDER_SELECTIONS = ("fastest", "cheapest", "preferred")
_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@:-]{0,199}$")


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """A verified policy: its monotonically increasing version, signer, text and content."""

    version: int
    signer_key_id: str
    text: str
    policy: EffectivePolicy


def _minute(reader: TableReader, name: str) -> int:
    raw = reader.string(name, "")
    m = _HHMM.match(raw)
    if not m:
        raise reader.error(name, "expected HH:MM (00:00 to 24:00)")
    if raw == "24:00":
        return 24 * 60
    return int(m.group(1)) * 60 + int(m.group(2))


def parse_windows(raw: Any, reader: TableReader, name: str, tz_name: str) -> WindowSet | None:
    """``[[escalation_windows]]`` as a WindowSet; None when the key is absent."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(w, dict) for w in raw):
        raise reader.error(name, "expected an array of tables")
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise reader.error("timezone", f"unknown IANA time zone {tz_name!r}") from exc
    windows = []
    for i, table in enumerate(raw):
        w = TableReader(table, source=reader.source, prefix=f"{reader.key(name)}[{i}].")
        days = w.string_list("days", list(_DAYS))
        unknown = [d for d in days if d.lower() not in _DAYS]
        if unknown:
            raise w.error("days", f"unknown day {unknown[0]!r} (use mon..sun)")
        start, end = _minute(w, "start"), _minute(w, "end")
        if start == end:
            raise w.error("end", "must differ from start")
        w.finish()
        windows.append(TimeWindow(frozenset(_DAYS[d.lower()] for d in days), start, end))
    return WindowSet(tz=tz, windows=tuple(windows))


def _name_list(reader: TableReader, name: str) -> tuple[str, ...]:
    values = reader.string_list(name, ())
    for v in values:
        if not _NAME.match(v):
            raise reader.error(name, f"invalid name {v[:60]!r}")
    return values


def _data_class(reader: TableReader, name: str, default: str) -> str:
    return reader.string(name, default, choices=DATA_CLASSES)


def _max_cloud_class(reader: TableReader) -> str | None:
    """Highest class allowed to the cloud; destinations must not widen with sensitivity."""
    dests = reader.table("data_classes")
    highest: str | None = None
    seen_local = False
    for cls in DATA_CLASSES:
        dest = dests.string(cls, "local", choices=("local", "cloud"))
        if dest == "cloud":
            if seen_local:
                raise dests.error(cls, "a more sensitive class cannot go further than a less one")
            highest = cls
        else:
            seen_local = True
    dests.finish()
    return highest


def _subtables(reader: TableReader, name: str) -> list[tuple[str, TableReader]]:
    """The named sub-tables of ``name`` (``[cloud.models."org/model"]``, ``[clients.x]``)."""
    raw = reader.raw(name, {})
    if not isinstance(raw, dict):
        raise reader.error(name, "expected a table")
    out = []
    for key, value in raw.items():
        if not _NAME.match(key) and key != "*":
            raise reader.error(f"{name}.{key[:60]}", "invalid name")
        if not isinstance(value, dict):
            raise reader.error(f"{name}.{key}", "expected a table")
        out.append(
            (key, TableReader(value, source=reader.source, prefix=f"{reader.key(name)}.{key}."))
        )
    return out


def _budgets(reader: TableReader) -> Budgets:
    b = reader.table("budget")
    budgets = Budgets(
        daily_tokens=b.integer("daily_tokens", 0, min_value=0),
        monthly_tokens=b.integer("monthly_tokens", 0, min_value=0),
        daily_usd=b.number("daily_usd", 0.0, min_value=0.0),
        monthly_usd=b.number("monthly_usd", 0.0, min_value=0.0),
    )
    for key in ("daily_usd", "monthly_usd"):
        if not math.isfinite(getattr(budgets, key)):
            raise b.error(key, "must be finite")
    b.finish()
    return budgets


def _cloud(
    reader: TableReader,
) -> tuple[dict[str, ModelPrice], str | None, str, frozenset[str] | None]:
    c = reader.table("cloud")
    models: dict[str, ModelPrice] = {}
    for name, m in _subtables(c, "models"):
        price = ModelPrice(
            m.number("input_usd_per_mtok", 0.0, min_value=0.0, max_value=1e6),
            m.number("output_usd_per_mtok", 0.0, min_value=0.0, max_value=1e6),
        )
        for key in ("input_usd_per_mtok", "output_usd_per_mtok"):
            if not m.has(key):
                raise m.error(key, "is required (budgets need a price)")
        m.finish()
        models[name] = price
    default_model = c.optional_string("default_model")
    if default_model is not None and default_model not in models:
        raise c.error("default_model", "must be one of [cloud.models]")
    if default_model is None and models:
        default_model = sorted(models)[0]
    provider = c.string("provider", "fastest")
    if provider not in PROVIDER_SELECTIONS and not _NAME.match(provider):
        raise c.error("provider", "must be a provider name or fastest|cheapest|preferred")
    allowed = frozenset(_name_list(c, "allowed_providers")) if c.has("allowed_providers") else None
    c.finish()
    return models, default_model, provider, allowed


def _clients(reader: TableReader) -> dict[str, ClientRule]:
    rules: dict[str, ClientRule] = {}
    for client_id, r in _subtables(reader, "clients"):
        escalation = r.boolean("escalation", True)
        max_class = r.optional_string("max_cloud_data_class")
        if max_class is not None and max_class not in DATA_CLASSES:
            raise r.error("max_cloud_data_class", f"must be one of {', '.join(DATA_CLASSES)}")
        rules[client_id] = ClientRule(
            escalation=escalation,
            max_cloud_data_class=max_class if max_class is not None else DATA_CLASSES[-1],
            budget_share=r.number("budget_share", 1.0, min_value=0.0, max_value=1.0),
        )
        r.finish()
    return rules


def parse_policy(text: str, *, signer_key_id: str = "") -> PolicyDocument:
    """Validate a policy TOML text; every problem is a :class:`PolicyError` naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy is not valid TOML: {exc}") from exc
    reader = TableReader(data, source="policy")
    try:
        if not reader.has("version"):
            raise reader.error("version", "is required")
        version = reader.integer("version", 0, min_value=1, max_value=2**63 - 1)
        models, default_model, provider, allowed = _cloud(reader)
        tz_name = reader.string("timezone", "UTC")
        windows = parse_windows(
            reader.raw("escalation_windows", None), reader, "escalation_windows", tz_name
        )
        policy = EffectivePolicy(
            version=version,
            air_gapped=reader.boolean("air_gapped", False),
            escalation=True,
            max_cloud_class=_max_cloud_class(reader),
            default_data_class=_data_class(reader, "default_data_class", "restricted"),
            budgets=_budgets(reader),
            models=models,
            default_model=default_model,
            provider=provider,
            allowed_providers=allowed,
            clients=_clients(reader),
            window_sets=() if windows is None else (windows,),
        )
        reader.finish()
    except ConfigError as exc:
        raise PolicyError(exc.message) from exc
    if class_rank(policy.default_data_class) < 0:
        raise PolicyError("policy: default_data_class is invalid")
    return PolicyDocument(version=version, signer_key_id=signer_key_id, text=text, policy=policy)
