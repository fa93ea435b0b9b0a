"""Power cuts: writers of policy, credentials and the audit log are killed with SIGKILL at
random moments (several at once for the audit log, which serialises appenders across
processes). After each cut, what the box reads back must be a record it acknowledged or a
newer one — never nothing, never a torn file, never a broken chain.

(Bundles have the same test in tests/bundles/test_bundles_crash.py.)
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hostile_common import Tally
from powercut_child import credential_store, policy_store

from edge_agent.audit import AuditEntry, AuditLog
from edge_agent.errors import EdgeAgentError

_LAUNCHER = Path(__file__).with_name("powercut_child.py")


class Launcher:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(_LAUNCHER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        # A reader thread, so waiting for a line can time out (a writer that survives
        # SIGKILL is a finding, not a test that hangs).
        self.lines: queue.Queue[str] = queue.Queue()
        self.recent: collections.deque[str] = collections.deque(maxlen=4)
        self._reader = threading.Thread(target=self._read, name="powercut-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _line(self, pids: list[int]) -> str:
        try:
            line = self.lines.get(timeout=30)
        except queue.Empty:
            launcher = _states([self.proc.pid])
            raise TimeoutError(
                f"writers {pids} did not end: {_states(pids)}; launcher {launcher}; "
                f"last lines {list(self.recent)!r}"
            ) from None
        self.recent.append(line)
        return line

    def cut(self, kind: str, state: Path, writers: int, after_s: float) -> list[str]:
        """Start writers, SIGKILL them after ``after_s``; return their acknowledgements."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{kind} {state} {writers}\n")
        self.proc.stdin.flush()
        acks: list[str] = []
        pids: list[int] = []
        while len(pids) < writers:
            line = self._line(pids)
            if line.startswith("pid "):
                pids.append(int(line.split()[1]))
            elif line.startswith("ack "):
                acks.append(line[4:].strip())
            elif not line:
                raise RuntimeError("the power-cut launcher died")
        time.sleep(after_s)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while True:
            line = self._line(pids)
            if not line or line.startswith("exit"):
                return acks
            if line.startswith("ack "):
                acks.append(line[4:].strip())

    def cut_or_hang(
        self, tally: Tally, kind: str, state: Path, writers: int, after_s: float
    ) -> list[str]:
        """:meth:`cut`, counting a writer that outlives SIGKILL as hung (then start afresh)."""
        try:
            return self.cut(kind, state, writers, after_s)
        except TimeoutError as exc:
            tally.fail("hung", str(exc))
            self.proc.kill()
            self.close()
            self.__init__()  # type: ignore[misc]
            return []

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _states(pids: list[int]) -> str:
    """What the kernel says about processes that survived SIGKILL (diagnostics)."""
    out = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            wchan = Path(f"/proc/{pid}/wchan").read_text()
            out.append(f"{pid}: {[x for x in status if x.startswith('State')]} wchan={wchan}")
        except OSError:
            out.append(f"{pid}: gone")
    return "; ".join(out)


def _fleet(state: Path) -> None:
    state.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    (state / "fleet.key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (state / "fleet.pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _stale_temps(tally: Tally, folder: Path, what: str) -> int:
    """Temporary files left by killed writers; the next write sweeps them, so at most the
    last cut's one may remain."""
    count = len(list(folder.glob(".*.tmp"))) if folder.is_dir() else 0
    if count > 1:
        tally.fail("leaks", f"{count} temporary {what} files piled up after the cuts")
    return count


def run_policy_cuts(tmp: Path, tally: Tally, cuts: int, seed: int) -> None:
    state = tmp / "policy-state"
    _fleet(state)
    rng, launcher, newest = random.Random(seed), Launcher(), 0
    try:
        for i in range(cuts):
            acks = launcher.cut_or_hang(tally, "policy", state, 1, rng.uniform(0.0, 0.15))
            newest = max([newest, *(int(a) for a in acks)])
            tally.cases += 1
            try:
                doc = policy_store(state).load()
            except EdgeAgentError as exc:
                tally.fail("lost", f"cut {i}: the stored policy is refused: {exc.message}")
                continue
            if newest and (doc is None or doc.version < newest):
                got = doc.version if doc else None
                tally.fail("lost", f"cut {i}: version {got} read back, {newest} was acknowledged")
            elif doc is not None:
                newest = doc.version  # a write that landed just before its ack counts too
    finally:
        launcher.close()
    tally.figures["policy_versions_written"] = newest
    tally.figures["policy_stale_temp_files"] = _stale_temps(tally, state / "policy", "policy")


def run_credential_cuts(tmp: Path, tally: Tally, cuts: int, seed: int) -> None:
    state = tmp / "credential-state"
    _fleet(state)
    rng, launcher = random.Random(seed), Launcher()
    newest: datetime | None = None
    installs = 0
    try:
        for i in range(cuts):
            acks = launcher.cut_or_hang(tally, "credentials", state, 1, rng.uniform(0.0, 0.15))
            installs += len(acks)
            for ack in acks:
                issued = datetime.fromisoformat(ack.split()[1])
                newest = issued if newest is None else max(newest, issued)
            tally.cases += 1
            try:
                info = credential_store(state).load()
            except EdgeAgentError as exc:
                tally.fail("lost", f"cut {i}: the stored envelope is refused: {exc.message}")
                continue
            if newest is not None and (info is None or info.issued_at < newest):
                tally.fail("lost", f"cut {i}: an older envelope than the acknowledged one")
            elif info is not None:
                newest = info.issued_at
    finally:
        launcher.close()
    tally.figures["credential_installs"] = installs
    tally.figures["credential_stale_temp_files"] = _stale_temps(
        tally, state / "credentials", "envelope"
    )


def run_audit_cuts(tmp: Path, tally: Tally, cuts: int, seed: int) -> None:
    state = tmp / "audit-state"
    state.mkdir(parents=True, exist_ok=True)
    path = state / "audit" / "audit.sqlite3"
    rng, launcher = random.Random(seed), Launcher()
    committed: dict[int, str] = {}
    try:
        for i in range(cuts):
            # Two processes append at once (the daemon and, say, a CLI import); both die.
            acks = launcher.cut_or_hang(tally, "audit", state, 2, rng.uniform(0.0, 0.2))
            for ack in acks:
                seq, digest = ack.split()
                committed[int(seq)] = digest
            tally.cases += 1
            log = AuditLog(path)
            try:
                result = log.verify()
                if not result.ok:
                    tally.fail("lost", f"cut {i}: the chain is broken: {result}")
                on_disk = {r.seq: r.hash for r in log.records()}
                missing = [s for s, h in committed.items() if on_disk.get(s) != h]
                if missing:
                    tally.fail("lost", f"cut {i}: acknowledged records {missing[:5]} are gone")
                # The log goes on after the cut: a new record links to the last one on disk.
                log.append(
                    AuditEntry(
                        request_id=f"after-cut-{i}", client_id="hostile", data_class="internal",
                        destination="local", reason="local.default", tokens_in=1, tokens_out=1,
                        cost_usd=0.0, model="edge-demo-mistral", provider="cpu",
                    )
                )  # fmt: skip
                committed.update({r.seq: r.hash for r in log.tail(1)})
                if not log.verify().ok:
                    tally.fail("lost", f"cut {i}: the chain broke when appending after the cut")
            finally:
                log.close()
    finally:
        launcher.close()
    tally.figures["audit_records_acknowledged"] = len(committed)
