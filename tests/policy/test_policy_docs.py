"""The examples of docs/POLICY.md are valid and behave as the page says."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from policy_support import CLINIC

from edge_agent._tomlreader import TableReader
from edge_agent.audit import parse_audit_config
from edge_agent.credentials import CredentialScope, parse_credentials_config
from edge_agent.policy import (
    BudgetView,
    LocalPolicyOverrides,
    PressureView,
    RouteRequest,
    decide,
    merge_policy,
    parse_policy,
    parse_policy_config,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "POLICY.md"


def _toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def _policies() -> list[str]:
    return [b for b in _toml_blocks() if b.startswith("version = ")]


def test_both_example_policies_parse() -> None:
    docs = [parse_policy(text) for text in _policies()]
    assert [d.version for d in docs] == [3, 12]
    # the clinic example is the one the decision tests use
    assert docs[0].policy == parse_policy(CLINIC).policy


def test_factory_example_behaves_as_documented() -> None:
    factory = parse_policy(_policies()[1]).policy
    scope = CredentialScope(frozenset(factory.models), frozenset(), None, None)
    p = merge_policy(factory, LocalPolicyOverrides(), scope)
    tuesday_10 = datetime(2026, 6, 2, 15, 0, tzinfo=UTC)  # 10:00 in Chicago
    night = datetime(2026, 6, 3, 5, 0, tzinfo=UTC)  # 00:00 in Chicago

    def reason(client: str, data_class: str | None, prompt: int, now: datetime) -> str:
        r = RouteRequest(client, data_class, "auto", prompt, 512, None, 4096, 0.0)
        return decide(r, PressureView("ok", True), "online", p, BudgetView(), now).reason

    assert reason("line-2", "internal", 6000, tuesday_10) == "cloud.context_exceeded"
    assert reason("line-2", "confidential", 6000, tuesday_10).endswith("data_class_local_only")
    assert reason("line-2", None, 6000, tuesday_10).endswith("data_class_local_only")
    assert reason("hmi-press-7", "internal", 6000, tuesday_10).endswith("client_not_allowed")
    assert reason("line-2", "internal", 6000, night).endswith("outside_time_window")


def test_config_section_examples_parse(tmp_path: Path) -> None:
    sections = {}
    for block in _toml_blocks():
        data = tomllib.loads(block)
        for name in ("policy", "credentials", "audit"):
            if name in data and "version" not in data:
                sections[name] = data[name]
    assert set(sections) == {"policy", "credentials", "audit"}
    pc = parse_policy_config(TableReader(sections["policy"], source="doc", prefix="policy."))
    assert pc.overrides.max_cloud_data_class == "internal"
    assert pc.overrides.window_set is not None
    parse_credentials_config(TableReader(sections["credentials"], source="doc", prefix="c."))
    assert not parse_audit_config(TableReader(sections["audit"], source="doc")).include_prompts
