"""The ``[policy]`` config section: where policy state lives, and local tightening.

The local administrator may only make the signed policy stricter. :func:`merge_policy` is
built from operations that can only remove permissions (min of budgets, intersection of
allow-lists, the lower of class limits, AND of switches, more time windows), and a
hypothesis test checks that no merged policy sends anything to the cloud that the signed
one alone would not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from edge_agent._tomlreader import TableReader
from edge_agent.credentials import CredentialScope
from edge_agent.policy._document import parse_windows
from edge_agent.policy._model import (
    DATA_CLASSES,
    Budgets,
    ClientRule,
    EffectivePolicy,
    WindowSet,
    class_rank,
    stricter_class,
)

__all__ = ["LocalPolicyOverrides", "PolicyConfig", "merge_policy", "parse_policy_config"]

_DEFAULT_STATE = Path("/var/lib/edge-agent")


@dataclass(frozen=True, slots=True)
class LocalPolicyOverrides:
    """Tightening from the box's own config. The defaults change nothing."""

    air_gapped: bool = False
    escalation: bool = True
    max_cloud_data_class: str | None = "restricted"  # None: nothing leaves the box
    default_data_class: str | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_usd: float | None = None
    monthly_usd: float | None = None
    allowed_models: frozenset[str] | None = None  # None: as signed
    allowed_providers: frozenset[str] | None = None
    deny_clients: frozenset[str] = frozenset()
    window_set: WindowSet | None = None


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    trusted_keys: tuple[Path, ...] = ()
    signed_policy_path: Path = _DEFAULT_STATE / "policy" / "policy.signed"
    budget_db: Path = _DEFAULT_STATE / "budget" / "ledger.sqlite3"
    overrides: LocalPolicyOverrides = LocalPolicyOverrides()

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> PolicyConfig:
        return cls(
            signed_policy_path=state_dir / "policy" / "policy.signed",
            budget_db=state_dir / "budget" / "ledger.sqlite3",
        )


def _optional_int(reader: TableReader, name: str) -> int | None:
    return reader.integer(name, 0, min_value=0) if reader.has(name) else None


def _optional_float(reader: TableReader, name: str) -> float | None:
    return reader.number(name, 0.0, min_value=0.0, max_value=1e12) if reader.has(name) else None


def _optional_set(reader: TableReader, name: str) -> frozenset[str] | None:
    return frozenset(reader.string_list(name, ())) if reader.has(name) else None


def parse_policy_config(
    reader: TableReader, *, state_dir: Path = _DEFAULT_STATE, base: Path | None = None
) -> PolicyConfig:
    defaults = PolicyConfig.for_state_dir(state_dir)
    keys = tuple(
        Path(k) if Path(k).is_absolute() or base is None else base / k
        for k in reader.string_list("trusted_keys", ())
    )
    max_class: str | None = reader.string(
        "max_cloud_data_class", "restricted", choices=(*DATA_CLASSES, "none")
    )
    default_class = reader.optional_string("default_data_class")
    if default_class is not None and default_class not in DATA_CLASSES:
        raise reader.error("default_data_class", f"must be one of {', '.join(DATA_CLASSES)}")
    tz_name = reader.string("timezone", "UTC")
    overrides = LocalPolicyOverrides(
        air_gapped=reader.boolean("air_gapped", False),
        escalation=reader.boolean("escalation", True),
        max_cloud_data_class=None if max_class == "none" else max_class,
        default_data_class=default_class,
        daily_tokens=_optional_int(reader, "daily_tokens"),
        monthly_tokens=_optional_int(reader, "monthly_tokens"),
        daily_usd=_optional_float(reader, "daily_usd"),
        monthly_usd=_optional_float(reader, "monthly_usd"),
        allowed_models=_optional_set(reader, "allowed_models"),
        allowed_providers=_optional_set(reader, "allowed_providers"),
        deny_clients=frozenset(reader.string_list("deny_clients", ())),
        window_set=parse_windows(
            reader.raw("escalation_windows", None), reader, "escalation_windows", tz_name
        ),
    )
    config = PolicyConfig(
        trusted_keys=keys,
        signed_policy_path=reader.path(
            "signed_policy_path", defaults.signed_policy_path, base=base
        ),
        budget_db=reader.path("budget_db", defaults.budget_db, base=base),
        overrides=overrides,
    )
    reader.finish()
    return config


def _intersect(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """Allow-list intersection where None means "any"."""
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _min_opt(value: float, limit: float | None) -> float:
    return value if limit is None else min(value, limit)


def merge_policy(
    signed: EffectivePolicy | None,
    local: LocalPolicyOverrides,
    credential: CredentialScope | None,
) -> EffectivePolicy:
    """The policy :func:`decide` uses: the signed one, only ever made stricter.

    No signed policy means nothing leaves the box; no usable credential means no escalation
    (there is nothing to authenticate with), whatever the documents say.
    """
    if signed is None:
        # Nothing leaves anyway; the local air gap still shows (status, the daemon's guard).
        return dataclasses.replace(EffectivePolicy.local_only(), air_gapped=local.air_gapped)
    models = dict(signed.models)
    if local.allowed_models is not None:
        models = {m: p for m, p in models.items() if m in local.allowed_models}
    providers = _intersect(signed.allowed_providers, local.allowed_providers)
    cap: float | None = signed.credential_cap_usd
    if credential is not None:
        models = {m: p for m, p in models.items() if m in credential.allowed_models}
        if credential.allowed_providers:
            providers = _intersect(providers, credential.allowed_providers)
        if credential.spend_cap_usd is not None:
            cap = credential.spend_cap_usd if cap is None else min(cap, credential.spend_cap_usd)
    default_model = signed.default_model if signed.default_model in models else None
    if default_model is None and models:
        default_model = sorted(models)[0]
    clients = dict(signed.clients)
    for client_id in local.deny_clients:
        clients[client_id] = ClientRule(escalation=False, max_cloud_data_class=None)
    default_class = signed.default_data_class
    if local.default_data_class is not None and class_rank(local.default_data_class) > class_rank(
        default_class
    ):
        default_class = local.default_data_class
    b = signed.budgets
    budgets = b.tightened(
        Budgets(
            int(_min_opt(b.daily_tokens, local.daily_tokens)),
            int(_min_opt(b.monthly_tokens, local.monthly_tokens)),
            _min_opt(b.daily_usd, local.daily_usd),
            _min_opt(b.monthly_usd, local.monthly_usd),
        )
    )
    windows = signed.window_sets + ((local.window_set,) if local.window_set is not None else ())
    return dataclasses.replace(
        signed,
        air_gapped=signed.air_gapped or local.air_gapped,
        escalation=signed.escalation and local.escalation and credential is not None,
        max_cloud_class=stricter_class(signed.max_cloud_class, local.max_cloud_data_class),
        default_data_class=default_class,
        budgets=budgets,
        models=models,
        default_model=default_model,
        allowed_providers=providers,
        clients=clients,
        window_sets=windows,
        credential_cap_usd=cap,
    )
