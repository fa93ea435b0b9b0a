"""The escalation policy: the signed document, local tightening, cloud budgets and the pure
:func:`decide` of where a chat may run."""

from edge_agent.policy._budget import BudgetLedger, BudgetUsage, Reservation
from edge_agent.policy._cli import add_policy_commands, describe_policy
from edge_agent.policy._decide import (
    BLOCKERS,
    LOCAL_CAN_ANSWER,
    MIN_CLOUD_WINDOW_S,
    NEEDS,
    BudgetView,
    CloudCheck,
    Decision,
    PressureView,
    RouteRequest,
    budget_allows,
    decide,
    resolve_data_class,
)
from edge_agent.policy._document import PolicyDocument, parse_policy
from edge_agent.policy._local import (
    LocalPolicyOverrides,
    PolicyConfig,
    merge_policy,
    parse_policy_config,
)
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
from edge_agent.policy._pace import LocalPace, PaceEstimate
from edge_agent.policy._policystore import POLICY_KIND, PolicyStore, sign_policy, verify_policy

__all__ = [
    "BLOCKERS",
    "DATA_CLASSES",
    "LOCAL_CAN_ANSWER",
    "MIN_CLOUD_WINDOW_S",
    "NEEDS",
    "POLICY_KIND",
    "BudgetLedger",
    "BudgetUsage",
    "BudgetView",
    "Budgets",
    "ClientRule",
    "CloudCheck",
    "Decision",
    "EffectivePolicy",
    "LocalPace",
    "LocalPolicyOverrides",
    "ModelPrice",
    "PaceEstimate",
    "PolicyConfig",
    "PolicyDocument",
    "PolicyStore",
    "PressureView",
    "Reservation",
    "RouteRequest",
    "TimeWindow",
    "WindowSet",
    "add_policy_commands",
    "budget_allows",
    "class_rank",
    "decide",
    "describe_policy",
    "merge_policy",
    "parse_policy",
    "parse_policy_config",
    "resolve_data_class",
    "sign_policy",
    "verify_policy",
]
