"""Format, config, trust store rotation, archive limits (with a fuzz), uploads."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bundle_fixtures import Fleet, bundle_doc, make_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent._tomlreader import TableReader
from edge_agent.bundles import (
    ArchiveLimits,
    BundlesConfig,
    TrustStore,
    TrustUpdate,
    UploadHeader,
    UploadReceiver,
    check_admissible,
    pack_bundle,
    parse_bundles_config,
    parse_manifest,
    sign_trust_update,
    unpack_bundle,
)
from edge_agent.bundles._keys import load_private_key
from edge_agent.errors import BundleError, ConfigError, EdgeAgentError

LIMITS = ArchiveLimits(max_total_bytes=1 << 20, max_file_bytes=1 << 19, max_files=20)


# -- bundle.json ------------------------------------------------------------------------------
def test_manifest_round_trip_and_checks() -> None:
    m = parse_manifest(json.dumps(bundle_doc(release=5)).encode())
    assert (m.name, m.release, m.model.num_kv_heads) == ("demo", 5, 2)
    assert parse_manifest(m.to_json()) == m
    now = datetime.now(UTC)
    check_admissible(m, now=now, running_version="0.1.0")
    with pytest.raises(BundleError, match=r"needs agent >= 0\.2"):
        check_admissible(
            parse_manifest(json.dumps(bundle_doc(min_agent_version="0.2")).encode()),
            now=now,
            running_version="0.1.9",
        )
    soon = parse_manifest(json.dumps(bundle_doc(expires_at=now + timedelta(hours=1))).encode())
    with pytest.raises(BundleError, match="freeze protection"):
        check_admissible(soon, now=now + timedelta(hours=2), running_version="0.1.0")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("release"), "release: missing"),
        (lambda d: d.update(release=0), "release: must be between 1"),
        (lambda d: d.update(release=True), "release: must be an integer"),
        (lambda d: d.update(name="../etc"), "name: '../etc' is not allowed"),
        (lambda d: d.update(format=2), "format 2 is not supported"),
        (lambda d: d.update(created_at="yesterday"), "created_at: must be an ISO-8601"),
        (lambda d: d.update(surprise=1), "surprise: unknown field"),
        (lambda d: d["model"].pop("context_length"), "model.context_length: missing"),
        (lambda d: d["model"].update(execution_providers=[]), "execution_providers"),
    ],
)
def test_manifest_errors_name_the_field(edit: object, message: str) -> None:
    doc = bundle_doc()
    edit(doc)  # type: ignore[operator]
    with pytest.raises(BundleError, match=message.replace("(", r"\(")):
        parse_manifest(json.dumps(doc).encode())


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    cfg = parse_bundles_config(TableReader({}, source="edge-agent.toml", prefix="bundles."))
    assert cfg == BundlesConfig()
    assert cfg.paths(tmp_path).trust_store == tmp_path / "trust" / "truststore.json"
    cfg = parse_bundles_config(
        TableReader(
            {"threshold": 2, "inbox_dir": "inbox", "max_files": 50},
            source="edge-agent.toml",
            prefix="bundles.",
        ),
        base=tmp_path,
    )
    assert (cfg.threshold, cfg.inbox_dir, cfg.max_files) == (2, tmp_path / "inbox", 50)
    with pytest.raises(ConfigError, match=r"unknown key 'bundles\.treshold'"):
        parse_bundles_config(TableReader({"treshold": 2}, source="x.toml", prefix="bundles."))
    with pytest.raises(ConfigError, match=r"bundles\.threshold: must be >= 1"):
        parse_bundles_config(TableReader({"threshold": 0}, source="x.toml", prefix="bundles."))


# -- trust store ------------------------------------------------------------------------------
def test_rotation_needs_the_current_threshold(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    store = fleet.trust(tmp_path / "trust.json", "old1", "old2", threshold=2)
    current = store.load()
    new_key = fleet.key("new")
    new_doc = json.loads(current.to_json())
    new_doc["version"] = current.version + 1
    new_doc["keys"] = [k for k in new_doc["keys"] if k["label"] != "old1"] + [
        {
            "key_id": new_key.key_id,
            "roles": ["bundle", "policy"],
            "label": "new",
            "public_key": new_key.public_key_path.read_text(),
        }
    ]
    new_doc["revoked"] = [fleet.key("old1").key_id]
    update = TrustUpdate(json.dumps(new_doc).encode())

    def signed_by(*names: str) -> TrustUpdate:
        u = update
        for n in names:
            u = sign_trust_update(u, load_private_key(fleet.key(n).private_key_path))
        return TrustUpdate.from_json(u.to_json())

    with pytest.raises(EdgeAgentError, match="signed by 1 current key"):
        store.apply_update(signed_by("old1"))
    with pytest.raises(EdgeAgentError, match="signed by 1 current key"):
        store.apply_update(signed_by("old1", "new"))  # the new key cannot vouch for itself
    doc = store.apply_update(signed_by("old1", "old2"))
    assert set(doc.keys_for("bundle")) == {fleet.key("old2").key_id, new_key.key_id}
    assert set(doc.keys_for("policy")) == {new_key.key_id}
    with pytest.raises(EdgeAgentError, match="not newer"):
        store.apply_update(signed_by("old2", "new"))  # a replay
    drop = dict(new_doc, version=new_doc["version"] + 1, revoked=[])
    drop_update = TrustUpdate(json.dumps(drop).encode())
    for n in ("old2", "new"):
        drop_update = sign_trust_update(
            drop_update, load_private_key(fleet.key(n).private_key_path)
        )
    with pytest.raises(EdgeAgentError, match="drops a revocation"):
        store.apply_update(drop_update)
    with pytest.raises(EdgeAgentError, match="is revoked"):
        store.trust(fleet.key("old1").public_key_path.read_bytes(), frozenset({"bundle"}))


def test_trust_store_refuses_a_doctored_key_id(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    store = fleet.trust(tmp_path / "t.json", "a")
    doc = json.loads(store.path.read_text())
    doc["keys"][0]["key_id"] = "0" * 64
    store.path.write_text(json.dumps(doc))
    with pytest.raises(EdgeAgentError, match="does not match the public key"):
        TrustStore(store.path).load()


# -- archive ----------------------------------------------------------------------------------
def test_pack_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, 1)
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    pack_bundle(folder, a)
    pack_bundle(folder, b)
    assert a.read_bytes() == b.read_bytes()
    assert unpack_bundle(a, tmp_path / "out", LIMITS) == 4
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").read_text() == '{"version": "1.0"}'


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([(f"f{i}", b"x") for i in range(21)], "more than 20 entries"),
        ([("big", b"x" * (LIMITS.max_file_bytes + 1))], "member too large"),
        (
            [("f1", b"x" * (1 << 19)), ("f2", b"x" * (1 << 19)), ("f3", b"x")],
            "content larger than the limit",
        ),
        ([("a/./b", b"x")], "not canonical"),
        ([("a", b"x"), ("a/b", b"y")], "uses a file as a folder"),
        ([("a\\..\\b", b"x")], "name refused"),
    ],
)
def test_archive_limits(tmp_path: Path, members: list[tuple[str, bytes]], message: str) -> None:
    archive = tmp_path / "x.tar"
    archive.write_bytes(_tar(members))
    with pytest.raises(BundleError, match=message):
        unpack_bundle(archive, tmp_path / "out", LIMITS)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_archives_never_escape_or_crash(tmp_path: Path, data: st.DataObject) -> None:
    base = _tar([("bundle.json", b"{}"), ("dir/model.onnx", b"m" * 3000)])
    mutated = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(mutated) - 1))
        mutated[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(mutated)))
    case = tmp_path / hashlib.sha256(bytes(mutated[:cut])).hexdigest()[:16]
    case.mkdir(exist_ok=True)
    archive = case / "a.tar"
    archive.write_bytes(bytes(mutated[:cut]))
    out = case / "out"
    if out.exists():
        return
    with contextlib.suppress(BundleError):
        unpack_bundle(archive, out, LIMITS)
    for p in case.rglob("*"):
        assert p.resolve().is_relative_to(case.resolve())
        assert not p.is_symlink()


# -- uploads ----------------------------------------------------------------------------------
def test_upload_resume_and_checks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    digest = hashlib.sha256(data).hexdigest()
    free = {"bytes": 10**9}
    r = UploadReceiver(
        tmp_path / "up",
        max_bytes=10**6,
        chunk_limit=4096,
        free_space_margin=1000,
        free_bytes=lambda _p: free["bytes"],
    )
    s = r.open(UploadHeader("u1", len(data), digest))
    s.write(data[:4096])
    s.write(data[4096:8000])
    s.close()
    assert r.offset("u1") == 8000
    with pytest.raises(EdgeAgentError, match="resumes at offset 8000"):
        r.open(UploadHeader("u1", len(data), digest, offset=4096))
    with pytest.raises(EdgeAgentError, match="different archive"):
        r.open(UploadHeader("u1", len(data) + 1, digest, offset=8000))
    s = r.open(UploadHeader("u1", len(data), digest, offset=8000))
    with pytest.raises(EdgeAgentError, match="larger than 4096"):
        s.write(data[8000:20000])
    for i in range(8000, len(data), 4096):
        s.write(data[i : i + 4096])
    done = s.finish()
    assert done.read_bytes() == data
    assert r.offset("u1") == 0
    with pytest.raises(EdgeAgentError, match="upload_id"):
        r.open(UploadHeader("../x", len(data), digest))
    free["bytes"] = 2 * len(data)
    with pytest.raises(EdgeAgentError, match="not enough disk space"):
        r.open(UploadHeader("u2", len(data), digest))
