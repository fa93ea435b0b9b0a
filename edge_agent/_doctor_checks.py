"""The individual checks of ``edge-agent doctor``; each returns one :class:`CheckResult`.

A check never raises for a problem it finds: it reports it with what to fix. The report
module turns an unexpected exception into a failed check, so one broken probe cannot hide
the others.
"""

from __future__ import annotations

import enum
import os
import pwd
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from edge_agent._malloc import glibc_reads_hugetlb, transparent_huge_pages_mode
from edge_agent.pressure import read_genai_config

__all__ = [
    "CheckResult",
    "Status",
    "check_clock",
    "check_disk",
    "check_huge_pages",
    "check_keys",
    "check_model",
    "check_pressure",
    "check_providers",
    "check_router",
    "check_state_dir",
    "check_unit",
]

GIB = 1024**3


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the doctor's table: what was checked, the verdict, and what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def _service_uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


# --- execution providers ---------------------------------------------------------------

# onnxruntime-genai's probes say what it was built to drive; onnxruntime's provider list says
# what the installed runtime can load. A provider is usable only when both agree.
_PROBES = {
    "cuda": ("is_cuda_available", "CUDAExecutionProvider"),
    "dml": ("is_dml_available", "DmlExecutionProvider"),
    "qnn": ("is_qnn_available", "QNNExecutionProvider"),
    "openvino": ("is_openvino_available", "OpenVINOExecutionProvider"),
    "webgpu": ("is_webgpu_available", "WebGpuExecutionProvider"),
}


def genai_providers() -> set[str]:
    """Providers onnxruntime-genai claims support for (cpu always)."""
    import onnxruntime_genai as og

    found = {"cpu"}
    for name, (probe, _) in _PROBES.items():
        fn = getattr(og, probe, None)
        try:
            if fn is not None and fn():
                found.add(name)
        except Exception:  # noqa: S112 - a probe that crashes means "not available"
            continue
    return found


def ort_providers() -> list[str]:
    import onnxruntime  # type: ignore[import-untyped]

    return list(onnxruntime.get_available_providers())


def check_providers(
    configured: Iterable[str],
    *,
    genai: Callable[[], set[str]] = genai_providers,
    ort: Callable[[], list[str]] = ort_providers,
) -> CheckResult:
    configured = list(configured)
    claimed = genai()
    loadable = set(ort())
    have = {"cpu"} | {
        name for name, (_, ep) in _PROBES.items() if name in claimed and ep in loadable
    }
    usable = [p for p in configured if p in have]
    missing = [p for p in configured if p not in have and p != "cpu"]
    eps = ", ".join(sorted(p.removesuffix("ExecutionProvider") for p in loadable))
    detail = f"available: {', '.join(sorted(have))} (onnxruntime: {eps})"
    if not usable:
        return CheckResult(
            "providers",
            Status.FAIL,
            f"none of the configured providers ({', '.join(configured)}) is available; {detail}",
            'add "cpu" to [engine] providers, or install the accelerator runtime',
        )
    if missing and usable == ["cpu"]:
        return CheckResult(
            "providers",
            Status.WARN,
            f"will run on cpu; configured but unavailable: {', '.join(missing)}; {detail}",
            "install the matching onnxruntime-genai build and enable the accelerator drop-in "
            "(INSTALL.md, 'Accelerators'), or drop them from [engine] providers",
        )
    return CheckResult("providers", Status.OK, f"will use {usable[0]}; {detail}")


# --- model folder / active bundle --------------------------------------------------------


def check_model(model_dir: Path | None, verifier: Callable[[Path], None] | None) -> CheckResult:
    if model_dir is None:
        return CheckResult(
            "model",
            Status.FAIL,
            "no model configured and no bundle active",
            "set [engine] model_dir or push a signed bundle (edge-agent bundle push)",
        )
    config = model_dir / "genai_config.json"
    try:
        doc = read_genai_config(model_dir)
    except FileNotFoundError:
        return CheckResult(
            "model",
            Status.FAIL,
            f"{config} is missing",
            "point [engine] model_dir at an ONNX GenAI model folder",
        )
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return CheckResult(
            "model",
            Status.FAIL,
            f"{config} is unreadable or not JSON ({type(exc).__name__})",
            "reinstall the model or bundle",
        )
    model = doc.get("model")
    decoder = model.get("decoder") if isinstance(model, dict) else None
    if not isinstance(decoder, dict):
        return CheckResult(
            "model",
            Status.FAIL,
            f"{config} has no model.decoder section",
            "reinstall the model or bundle",
        )
    filename = decoder.get("filename")
    if isinstance(filename, str) and not (model_dir / filename).is_file():
        return CheckResult(
            "model",
            Status.FAIL,
            f"{model_dir / filename} (named by genai_config.json) is missing",
            "reinstall the model or bundle",
        )
    if verifier is not None:
        from edge_agent.errors import EdgeAgentError

        try:
            verifier(model_dir)
        except EdgeAgentError as exc:
            return CheckResult(
                "model", Status.FAIL, f"bundle refused: {exc.message}", "push a valid bundle"
            )
    kind = model.get("type", "?") if isinstance(model, dict) else "?"
    return CheckResult("model", Status.OK, f"{model_dir} ({kind})")


# --- keys, state directory ---------------------------------------------------------------


def check_keys(key_paths: Iterable[Path], service_user: str) -> CheckResult:
    uid = _service_uid(service_user)
    problems: list[str] = []
    fixes: list[str] = []
    present = 0
    for path in key_paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        present += 1
        if st.st_mode & 0o077:
            problems.append(f"{path} is mode {stat.S_IMODE(st.st_mode):04o}")
            fixes.append(f"chmod 600 {path}")
        if uid is not None and st.st_uid != uid:
            problems.append(f"{path} is not owned by {service_user}")
            fixes.append(f"chown {service_user}: {path}")
    if problems:
        return CheckResult("keys", Status.FAIL, "; ".join(problems), "; ".join(fixes))
    if present == 0:
        return CheckResult(
            "keys", Status.WARN, "no key files yet", "start the daemon once: it creates them"
        )
    owner = f", owned by {service_user}" if uid is not None else ""
    return CheckResult("keys", Status.OK, f"{present} key file(s) private (0600{owner})")


def check_state_dir(state_dir: Path, service_user: str) -> CheckResult:
    try:
        st = state_dir.stat()
    except FileNotFoundError:
        return CheckResult(
            "state dir",
            Status.FAIL,
            f"{state_dir} does not exist",
            "systemd-tmpfiles --create edge-agent.conf (or start the service)",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        return CheckResult(
            "state dir",
            Status.FAIL,
            f"{state_dir} is world-writable ({mode:04o})",
            f"chmod 750 {state_dir}",
        )
    uid = _service_uid(service_user)
    if uid is not None and st.st_uid != uid:
        return CheckResult(
            "state dir",
            Status.FAIL,
            f"{state_dir} is not owned by {service_user}",
            f"chown -R {service_user}: {state_dir}",
        )
    if mode & 0o007:
        return CheckResult(
            "state dir",
            Status.WARN,
            f"{state_dir} is readable by other users ({mode:04o})",
            f"chmod o-rwx {state_dir}",
        )
    return CheckResult("state dir", Status.OK, f"{state_dir} ({mode:04o})")


# --- clock, disk, pressure ---------------------------------------------------------------

_FUTURE_LIMIT_S = 20 * 365 * 86400


def check_clock(not_before: float, *, now: float | None = None) -> CheckResult:
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(now))
    fix = "enable time sync: timedatectl set-ntp true (or set it: timedatectl set-time ...)"
    # A day of slack: build machines and boxes may disagree on time zones of file stamps.
    if now < not_before - 86400:
        built = time.strftime("%Y-%m-%d", time.gmtime(not_before))
        return CheckResult(
            "clock",
            Status.FAIL,
            f"{stamp} is before this software was built ({built}): certificates and "
            "bundle expiry cannot be checked",
            fix,
        )
    if now > not_before + _FUTURE_LIMIT_S:
        return CheckResult("clock", Status.FAIL, f"{stamp} is implausibly far in the future", fix)
    return CheckResult("clock", Status.OK, stamp)


def check_disk(state_dir: Path, *, fail_below: int, warn_below: int) -> CheckResult:
    probe = state_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    detail = f"{free / GIB:.1f} GiB free on {probe}"
    fix = "free space: old bundle slots live under the state dir (edge-agent bundle list)"
    if free < fail_below:
        return CheckResult("disk", Status.FAIL, detail + f" (< {fail_below / GIB:.1f} GiB)", fix)
    if free < warn_below:
        return CheckResult(
            "disk",
            Status.WARN,
            detail + f" (< {warn_below / GIB:.1f} GiB: a second bundle slot may not fit)",
            fix,
        )
    return CheckResult("disk", Status.OK, detail)


def check_pressure(proc_root: Path) -> CheckResult:
    missing = []
    for name in ("cpu", "memory", "io"):
        try:
            (proc_root / "pressure" / name).read_text()
        except OSError:
            missing.append(name)
    if missing:
        return CheckResult(
            "pressure",
            Status.WARN,
            f"PSI unavailable ({', '.join(missing)}): pressure falls back to meminfo and load",
            "boot the kernel with psi=1 (CONFIG_PSI)",
        )
    return CheckResult("pressure", Status.OK, f"{proc_root}/pressure readable")


def check_huge_pages(
    wanted: bool, thp_enabled: Path, libc: tuple[str, str] | None = None
) -> CheckResult:
    """engine.huge_page_malloc takes effect: the worker's large activations on 2 MiB pages
    (a prefill otherwise faults them in 4 KiB at a time: docs/BENCHMARKS.md "Huge pages")."""
    name = "huge pages"
    if not wanted:
        return CheckResult(name, Status.OK, "engine.huge_page_malloc is off")
    if not glibc_reads_hugetlb(libc):
        return CheckResult(
            name,
            Status.WARN,
            "this libc ignores glibc.malloc.hugetlb: prefill faults its buffers in 4 KiB pages",
            "run on glibc 2.35 or newer (Debian 12 has 2.36)",
        )
    mode = transparent_huge_pages_mode(thp_enabled)
    if mode == "madvise":
        return CheckResult(name, Status.OK, "THP madvise: the worker's malloc asks for them")
    if mode == "always":
        return CheckResult(name, Status.OK, "THP always: the kernel gives them unasked")
    detail = "THP is off (never)" if mode == "never" else "this kernel has no THP"
    return CheckResult(
        name,
        Status.WARN,
        f"{detail}: prefill faults its buffers in 4 KiB pages",
        f"echo madvise > {thp_enabled} (or transparent_hugepage=madvise on the kernel "
        "command line)",
    )


# --- router connectivity -----------------------------------------------------------------


def check_router(
    base_url: str | None, *, air_gapped: bool, timeout_s: float, proxy: str | None = None
) -> CheckResult:
    if air_gapped:
        return CheckResult("router", Status.OK, "air-gapped: not contacted")
    if not base_url:
        return CheckResult("router", Status.OK, "no cloud router configured")
    try:
        with httpx.Client(timeout=timeout_s, proxy=proxy, follow_redirects=False) as client:
            started = time.monotonic()
            response = client.head(base_url)
            elapsed_ms = (time.monotonic() - started) * 1000
    except httpx.TimeoutException:
        problem = f"no answer within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        problem = f"cannot connect ({type(exc).__name__})"
    else:
        # Any HTTP answer proves DNS, routing, TLS and the proxy; auth is checked elsewhere.
        return CheckResult(
            "router",
            Status.OK,
            f"{base_url} answered HTTP {response.status_code} in {elapsed_ms:.0f} ms",
        )
    return CheckResult(
        "router",
        Status.WARN,
        f"{base_url}: {problem}; local inference still works, escalation will not",
        "check DNS, the default route, firewall egress to 443 and [cloud] proxy; "
        "or set air_gapped = true in [policy] if the box must stay offline",
    )


# --- the installed systemd unit ----------------------------------------------------------

_REQUIRED_HARDENING = {
    "ProtectSystem": {"strict"},
    "PrivateTmp": {"yes", "true"},
    "NoNewPrivileges": {"yes", "true"},
    "CapabilityBoundingSet": {""},
    "RestrictNamespaces": {"yes", "true"},
    "SystemCallArchitectures": {"native"},
    "ProtectKernelTunables": {"yes", "true"},
    "ProtectControlGroups": {"yes", "true"},
}


def _unit_settings(paths: Iterable[Path]) -> dict[str, str]:
    """Last assignment wins, as systemd applies the unit then its drop-ins in order."""
    settings: dict[str, str] = {}
    for path in paths:
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";", "[")) or "=" not in line:
                continue
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def check_unit(unit_paths: Iterable[Path], dropin_dirs: Iterable[Path]) -> CheckResult:
    unit = next((p for p in unit_paths if p.is_file()), None)
    if unit is None:
        return CheckResult("systemd unit", Status.OK, "not installed as a service (skipped)")
    dropins = sorted(
        (p for d in dropin_dirs if d.is_dir() for p in d.glob("*.conf")), key=lambda p: p.name
    )
    s = _unit_settings([unit, *dropins])
    weak = [
        f"{key}={s.get(key, '(unset)')}"
        for key, good in _REQUIRED_HARDENING.items()
        if s.get(key) not in good
    ]
    if s.get("User", "root") in ("root", "0"):
        weak.append("User=root")
    if s.get("Type") != "notify" or "WatchdogSec" not in s:
        weak.append("Type/WatchdogSec (no readiness or watchdog)")
    if weak:
        return CheckResult(
            "systemd unit",
            Status.WARN,
            f"{unit}: sandbox weakened: {', '.join(weak)}",
            "remove the overriding drop-in (systemctl revert edge-agent) or keep only the "
            "accelerator one",
        )
    extra = f" + {len(dropins)} drop-in(s)" if dropins else ""
    return CheckResult("systemd unit", Status.OK, f"{unit}{extra}: hardening in place")


def default_not_before() -> float:
    """The build date of the installed software (the package's file stamps)."""
    import edge_agent

    return os.stat(edge_agent.__file__).st_mtime
