"""``edge-agent doctor``: checks a box end to end and says what to fix.

Checks: execution providers, the model folder (and, through a hook, the active bundle's
signature), key files and the state directory's permissions, clock sanity, free disk,
pressure stall information, connectivity to the cloud router (never when air-gapped) and the
installed systemd unit's sandbox. Each yields ok / warn / fail with a fix; the exit code is 1
when anything failed, so provisioning scripts can gate on it.

The checks take a small :class:`DoctorInputs`, built from the agent's configuration by
:func:`inputs_from_config`, so the doctor works on a box whose config is half broken.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent._doctor_checks import (
    GIB,
    CheckResult,
    Status,
    check_clock,
    check_disk,
    check_huge_pages,
    check_keys,
    check_model,
    check_pressure,
    check_providers,
    check_router,
    check_state_dir,
    check_unit,
    default_not_before,
)
from edge_agent._doctor_service import check_service
from edge_agent._malloc import THP_ENABLED
from edge_agent.errors import EdgeAgentError

__all__ = [
    "BundleVerifier",
    "CheckResult",
    "DoctorInputs",
    "DoctorReport",
    "Status",
    "add_doctor_command",
    "format_report",
    "inputs_from_config",
    "run_doctor",
]

# Deeper verification of the active bundle (signature, expiry); raises EdgeAgentError.
BundleVerifier = Callable[[Path], None]

_UNIT_PATHS = (
    Path("/etc/systemd/system/edge-agent.service"),
    Path("/lib/systemd/system/edge-agent.service"),
    Path("/usr/lib/systemd/system/edge-agent.service"),
)
_DROPIN_DIRS = (
    Path("/usr/lib/systemd/system/edge-agent.service.d"),
    Path("/etc/systemd/system/edge-agent.service.d"),
    Path("/run/systemd/system/edge-agent.service.d"),
)


@dataclass(frozen=True, slots=True)
class DoctorInputs:
    """What the doctor looks at; every field has the packaged box's value as default."""

    state_dir: Path = Path("/var/lib/edge-agent")
    model_dir: Path | None = None
    # Private keys that must be 0600 and owned by the service user.
    key_paths: tuple[Path, ...] = ()
    providers: tuple[str, ...] = ("cpu",)
    router_base_url: str | None = "https://router.huggingface.co/v1"
    router_proxy: str | None = None
    air_gapped: bool = False
    router_timeout_s: float = 3.0
    service_user: str = "edge-agent"
    min_free_bytes: int = 2 * GIB
    warn_free_bytes: int = 10 * GIB
    # The software's build time: a clock before it is wrong (None: the package's file stamps).
    not_before: float | None = None
    proc_root: Path = Path("/proc")
    huge_page_malloc: bool = True  # engine.huge_page_malloc
    thp_enabled: Path = THP_ENABLED
    unit_paths: tuple[Path, ...] = _UNIT_PATHS
    dropin_dirs: tuple[Path, ...] = _DROPIN_DIRS


@dataclass(frozen=True, slots=True)
class DoctorReport:
    results: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status is Status.FAIL)

    @property
    def exit_code(self) -> int:
        """1 when any check failed; warnings alone still pass."""
        return 1 if self.failed else 0

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.exit_code == 0,
                "checks": [
                    {"name": r.name, "status": str(r.status), "detail": r.detail, "fix": r.fix}
                    for r in self.results
                ],
            },
            indent=2,
        )


def _guarded(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    try:
        return check()
    except Exception as exc:
        # One broken probe must not hide the other checks' answers.
        return CheckResult(name, Status.FAIL, f"check crashed ({type(exc).__name__})", "")


def run_doctor(
    inputs: DoctorInputs,
    *,
    bundle_verifier: BundleVerifier | None = None,
    skip: frozenset[str] = frozenset(),
) -> DoctorReport:
    """Run every check (except those named in ``skip``) and collect the results in order."""
    not_before = inputs.not_before if inputs.not_before is not None else default_not_before()
    checks: list[tuple[str, Callable[[], CheckResult]]] = [
        ("providers", lambda: check_providers(inputs.providers)),
        ("model", lambda: check_model(inputs.model_dir, bundle_verifier)),
        ("keys", lambda: check_keys(inputs.key_paths, inputs.service_user)),
        ("state dir", lambda: check_state_dir(inputs.state_dir, inputs.service_user)),
        ("clock", lambda: check_clock(not_before)),
        (
            "disk",
            lambda: check_disk(
                inputs.state_dir,
                fail_below=inputs.min_free_bytes,
                warn_below=inputs.warn_free_bytes,
            ),
        ),
        ("pressure", lambda: check_pressure(inputs.proc_root)),
        ("huge pages", lambda: check_huge_pages(inputs.huge_page_malloc, inputs.thp_enabled)),
        (
            "router",
            lambda: check_router(
                inputs.router_base_url,
                air_gapped=inputs.air_gapped,
                timeout_s=inputs.router_timeout_s,
                proxy=inputs.router_proxy,
            ),
        ),
        ("systemd unit", lambda: check_unit(inputs.unit_paths, inputs.dropin_dirs)),
        ("service", check_service),
    ]
    return DoctorReport(tuple(_guarded(name, fn) for name, fn in checks if name not in skip))


def format_report(report: DoctorReport) -> str:
    """A fixed-width table, then one "fix:" line under each check that is not ok."""
    width = max((len(r.name) for r in report.results), default=0)
    lines = []
    for r in report.results:
        lines.append(f"{str(r.status).upper():<4}  {r.name:<{width}}  {r.detail}")
        if r.status is not Status.OK and r.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {r.fix}")
    n_fail = len(report.failed)
    n_warn = sum(r.status is Status.WARN for r in report.results)
    lines.append(f"{n_fail} failed, {n_warn} warning(s), {len(report.results)} checks")
    return "\n".join(lines)


def _section(config: object, name: str) -> object | None:
    return getattr(config, name, None)


def inputs_from_config(config: object, **overrides: Any) -> DoctorInputs:
    """Build DoctorInputs from an ``AgentConfig``; sections the config lacks keep defaults.

    Reads ``paths.state_dir``, ``engine.model_dir`` and ``engine.providers``, the key files
    of ``credentials.device_key`` and ``tls.key_file``, ``cloud.base_url``/``cloud.proxy``
    and ``policy.air_gapped`` (the box's local override) when those sections exist.
    """
    d = DoctorInputs()
    paths, engine = _section(config, "paths"), _section(config, "engine")
    creds, tls = _section(config, "credentials"), _section(config, "tls")
    cloud, policy = _section(config, "cloud"), _section(config, "policy")
    keys = tuple(
        p
        for p in (getattr(creds, "device_key", None), getattr(tls, "key_file", None))
        if isinstance(p, Path)
    )
    local = getattr(policy, "local", policy)
    values: dict[str, Any] = {
        "state_dir": getattr(paths, "state_dir", d.state_dir),
        "model_dir": getattr(engine, "model_dir", d.model_dir),
        "providers": tuple(getattr(engine, "providers", d.providers)),
        "huge_page_malloc": bool(getattr(engine, "huge_page_malloc", d.huge_page_malloc)),
        "key_paths": keys,
        "router_base_url": getattr(cloud, "base_url", d.router_base_url),
        "router_proxy": getattr(cloud, "proxy", d.router_proxy),
        "air_gapped": bool(getattr(local, "air_gapped", d.air_gapped)),
    }
    values.update(overrides)
    return DoctorInputs(**values)


def add_doctor_command(
    subparsers: Any,
    *,
    load_config: Callable[[Path], object] | None = None,
    bundle_verifier: BundleVerifier | None = None,
) -> argparse.ArgumentParser:
    """Register ``doctor`` on an argparse subparsers object; returns its parser.

    The command reads ``args.config``: a path (loaded with ``load_config``, by default
    :func:`edge_agent.config.load_config`), an already loaded config object, or a
    :class:`DoctorInputs`. It prints the table (or JSON) and returns the exit code.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor", help="check this box and print what to fix"
    )
    # Default: the main CLI's global --agent-config, else the packaged path.
    parser.add_argument("--config", default=None)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--offline", action="store_true", help="do not contact the cloud router")

    def command(args: argparse.Namespace) -> int:
        return _doctor_command(args, load_config, bundle_verifier)

    parser.set_defaults(func=command)
    return parser


def _doctor_command(
    args: argparse.Namespace,
    load_config: Callable[[Path], object] | None,
    bundle_verifier: BundleVerifier | None,
) -> int:
    config: object = args.config
    if config is None:
        config = getattr(args, "agent_config", None) or "/etc/edge-agent/agent.toml"
    config_result: CheckResult | None = None
    if isinstance(config, str | Path):
        if load_config is None:
            from edge_agent import config as config_module

            load_config = config_module.load_config
        path = Path(config)
        try:
            config = load_config(path)
            config_result = CheckResult("config", Status.OK, str(path))
        except EdgeAgentError as exc:
            config_result = CheckResult(
                "config", Status.FAIL, exc.message, "correct the file as the message says"
            )
            config = None
    inputs = config if isinstance(config, DoctorInputs) else inputs_from_config(config)
    skip = frozenset({"router"}) if getattr(args, "offline", False) else frozenset()
    report = run_doctor(inputs, bundle_verifier=bundle_verifier, skip=skip)
    if config_result is not None:
        report = DoctorReport((config_result, *report.results))
    out = report.to_json() if getattr(args, "json", False) else format_report(report)
    print(out, file=sys.stdout)
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge_agent.doctor``: the doctor alone, for boxes without the full CLI."""
    parser = argparse.ArgumentParser(prog="edge-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    add_doctor_command(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
