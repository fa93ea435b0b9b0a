"""The doctor's look at the running service: is the unit up, how did its last start end, and
what did it last log at error level. A dead unit must never pass as "0 failures"."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_agent._doctor_checks import CheckResult, Status

__all__ = ["Runner", "check_service"]

Runner = Callable[[Sequence[str]], str]
_PROPERTIES = ("LoadState", "ActiveState", "SubState", "Result", "NRestarts", "StatusText")


def _run(cmd: Sequence[str]) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=15, check=False)
    return proc.stdout


def check_service(
    unit: str = "edge-agent.service",
    *,
    run: Runner = _run,
    systemd_dir: Path = Path("/run/systemd/system"),
) -> CheckResult:
    if not systemd_dir.is_dir():
        return CheckResult("service", Status.WARN, "systemd is not running here: not checked")
    shown = run(["systemctl", "show", unit, *(f"--property={p}" for p in _PROPERTIES)])
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    if props.get("LoadState") != "loaded":
        return CheckResult(
            "service",
            Status.WARN,
            f"{unit} is not installed as a unit ({props.get('LoadState', 'unknown')})",
        )
    active, sub = props.get("ActiveState", "unknown"), props.get("SubState", "")
    restarts = props.get("NRestarts", "0")
    status = props.get("StatusText", "")
    if active == "active":
        detail = f"active ({sub}), {restarts} restart(s) by systemd"
        return CheckResult("service", Status.OK, f"{detail}; {status}" if status else detail)
    journal = f"journalctl -u {unit} -b --no-pager -n 50"
    # "activating (auto-restart)" is a crash loop between two failed starts, not progress.
    if active in ("activating", "reloading", "deactivating") and sub != "auto-restart":
        return CheckResult("service", Status.WARN, f"{active} ({sub})", f"wait, or see {journal}")
    last_error = run(
        ["journalctl", "-u", unit, "-b", "-p", "err", "-n", "1", "--no-pager", "-o", "cat"]
    )
    parts = [f"{active} ({sub}); last start: {props.get('Result', 'unknown')}"]
    if status:
        parts.append(f"status: {status}")
    if last_error.strip():
        parts.append(f"last error: {last_error.strip().splitlines()[-1][:300]}")
    verdict = (
        Status.WARN if active == "inactive" and props.get("Result") == "success" else Status.FAIL
    )
    fix = (
        f"systemctl start {unit}"
        if verdict is Status.WARN
        else f"see {journal}; fix the cause, then systemctl reset-failed {unit} && "
        f"systemctl start {unit}"
    )
    return CheckResult("service", verdict, "; ".join(parts), fix)
