"""The tamper suite: every hostile bundle is refused with a clear error, the old one serves on."""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bundle_fixtures import FileHost, Fleet, make_folder, small_config

from edge_agent.bundles import BundleManager, TrustStore, UploadHeader
from edge_agent.errors import EdgeAgentError


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path / "fleet")


class Box:
    def __init__(self, tmp: Path, fleet: Fleet, threshold: int = 1) -> None:
        self.state = tmp / "state"
        self.host = FileHost()
        self.manager = BundleManager(
            small_config(threshold=threshold), state_dir=self.state, host=self.host
        )
        fleet.trust(self.manager.trust.path, "ops1", "ops2")
        self.manager.recover()

    def assert_serving(self, release: int) -> None:
        active = [b for b in self.manager.list_bundles() if b.active]
        assert [b.release for b in active] == [release]
        assert self.host.active_release == release
        assert not any(self.manager.store.staging.iterdir())  # nothing half-staged left


@pytest.fixture
async def box(tmp_path: Path, fleet: Fleet) -> Box:
    b = Box(tmp_path, fleet)
    v1 = fleet.sign(make_folder(tmp_path / "src", 1), "ops1")
    result = await b.manager.install_archive(fleet.archive(v1))
    assert result.outcome == "activated"
    b.assert_serving(1)
    return b


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _signed_members(folder: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        (tarfile.TarInfo(p.relative_to(folder).as_posix()), p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


def _flip(folder: Path) -> None:
    data = bytearray((folder / "model.onnx.data").read_bytes())
    data[100] ^= 0x01
    (folder / "model.onnx.data").write_bytes(bytes(data))


def _mix(folder: Path) -> None:
    other = make_folder(folder.parent / "other", 7)
    shutil.copy(other / "model.onnx", folder / "model.onnx")


Tamper = Callable[[Path], object]

FOLDER_CASES: list[tuple[str, Tamper, str]] = [
    ("bit flip", _flip, "changed: model.onnx.data"),
    ("extra file", lambda f: (f / "evil.py").write_text("import os"), "extra: evil.py"),
    (
        "missing file",
        lambda f: (f / "tokenizer" / "tokenizer.json").unlink(),
        "missing: tokenizer/tokenizer.json",
    ),
    ("mix-and-match", _mix, "changed: model.onnx"),
    (
        "bundle.json edited after signing",
        lambda f: (f / "bundle.json").write_text(
            (f / "bundle.json").read_text().replace('"release": 2', '"release": 99')
        ),
        "changed: bundle.json",
    ),
    (
        "signatures removed",
        lambda f: (f / "signatures").rename(f.parent / "gone"),
        "no signature files",
    ),
]


@pytest.mark.parametrize(
    ("case", "tamper", "expected"), FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES]
)
async def test_tampered_folder_is_refused(
    box: Box, fleet: Fleet, tmp_path: Path, case: str, tamper: Tamper, expected: str
) -> None:
    folder = fleet.sign(make_folder(tmp_path / "t", 2), "ops1")
    tamper(folder)
    with pytest.raises(EdgeAgentError, match=expected.replace("(", r"\(")):
        await box.manager.install_archive(fleet.archive(folder))
    box.assert_serving(1)
    await box.host.health_probe()


async def test_signatures_swapped_between_bundles(box: Box, fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.sign(make_folder(tmp_path / "a", 2), "ops1")
    b = fleet.sign(make_folder(tmp_path / "b", 3, payload=b"other weights" * 50), "ops1")
    shutil.rmtree(b / "signatures")
    shutil.copytree(a / "signatures", b / "signatures")
    with pytest.raises(EdgeAgentError, match=r"content-mismatch.*|changed: .*"):
        await box.manager.install_archive(fleet.archive(b))
    box.assert_serving(1)


@pytest.mark.parametrize(
    ("case", "member", "expected"),
    [
        ("path traversal", "../../etc/cron.d/evil", "escapes the bundle"),
        ("absolute path", "/etc/passwd", "absolute path"),
        ("symlink", "SYMLINK", "is a link"),
        ("hardlink", "HARDLINK", "is a link"),
        ("device", "DEVICE", "not a regular file"),
        ("duplicate", "bundle.json", "duplicate member"),
    ],
)
async def test_hostile_archive_is_refused(
    box: Box, fleet: Fleet, tmp_path: Path, case: str, member: str, expected: str
) -> None:
    folder = fleet.sign(make_folder(tmp_path / "h", 2), "ops1")
    members = _signed_members(folder)
    if member == "SYMLINK":
        info = tarfile.TarInfo("model.onnx.link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
        members.append((info, None))
    elif member == "HARDLINK":
        info = tarfile.TarInfo("hard")
        info.type, info.linkname = tarfile.LNKTYPE, "bundle.json"
        members.append((info, None))
    elif member == "DEVICE":
        info = tarfile.TarInfo("dev")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        members.append((info, None))
    else:
        members.append((tarfile.TarInfo(member), b"pwned"))
    archive = _tar(tmp_path / "hostile.tar", members)
    with pytest.raises(EdgeAgentError, match=expected):
        await box.manager.install_archive(archive)
    box.assert_serving(1)
    assert not (tmp_path / "etc").exists()


async def test_rollback_to_equal_or_older_release_is_refused(
    box: Box, fleet: Fleet, tmp_path: Path
) -> None:
    v3 = fleet.sign(make_folder(tmp_path / "r3", 3), "ops1")
    await box.manager.install_archive(fleet.archive(v3))
    for release in (3, 2, 1):
        old = fleet.sign(make_folder(tmp_path / f"old{release}", release), "ops1")
        with pytest.raises(EdgeAgentError, match=f"anti-rollback: release {release} of demo"):
            await box.manager.install_archive(fleet.archive(old))
    box.assert_serving(3)


async def test_expired_bundle_is_refused(box: Box, fleet: Fleet, tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(minutes=5)
    folder = fleet.sign(make_folder(tmp_path / "e", 2, expires_at=past), "ops1")
    with pytest.raises(EdgeAgentError, match=r"expired at .*freeze protection"):
        await box.manager.install_archive(fleet.archive(folder))
    box.assert_serving(1)


async def test_newer_agent_required_is_refused(box: Box, fleet: Fleet, tmp_path: Path) -> None:
    folder = fleet.sign(make_folder(tmp_path / "v", 2, min_agent_version="99.0"), "ops1")
    with pytest.raises(EdgeAgentError, match=r"needs agent >= 99.0, this agent is 0\.1\.0"):
        await box.manager.install_archive(fleet.archive(folder))
    box.assert_serving(1)


async def test_unknown_key_is_refused(box: Box, fleet: Fleet, tmp_path: Path) -> None:
    folder = fleet.sign(make_folder(tmp_path / "u", 2), "rogue")
    rogue = fleet.key("rogue").key_id[:16]
    with pytest.raises(EdgeAgentError, match=f"key {rogue}: unknown-key"):
        await box.manager.install_archive(fleet.archive(folder))
    box.assert_serving(1)


async def test_revoked_key_is_refused(box: Box, fleet: Fleet, tmp_path: Path) -> None:
    TrustStore(box.manager.trust.path).revoke(fleet.key("ops2").key_id)
    folder = fleet.sign(make_folder(tmp_path / "r", 2), "ops2")
    with pytest.raises(EdgeAgentError, match="revoked"):
        await box.manager.install_archive(fleet.archive(folder))
    box.assert_serving(1)


async def test_below_threshold_is_refused_and_k_of_n_accepted(tmp_path: Path, fleet: Fleet) -> None:
    b = Box(tmp_path, fleet, threshold=2)
    one = fleet.sign(make_folder(tmp_path / "one", 1), "ops1", "rogue")
    with pytest.raises(EdgeAgentError, match=r"1 valid signature\(s\), 2 required"):
        await b.manager.install_archive(fleet.archive(one))
    assert b.manager.list_bundles() == []
    two = fleet.sign(make_folder(tmp_path / "two", 2), "ops1", "ops2")
    result = await b.manager.install_archive(fleet.archive(two))
    assert set(result.bundle.signer_key_ids) == {fleet.key("ops1").key_id, fleet.key("ops2").key_id}


async def test_truncated_archive_is_refused(box: Box, fleet: Fleet, tmp_path: Path) -> None:
    archive = fleet.archive(fleet.sign(make_folder(tmp_path / "t", 2), "ops1"))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(EdgeAgentError, match="truncated"):
        await box.manager.install_archive(archive)
    box.assert_serving(1)


async def test_truncated_and_oversized_uploads_are_refused(
    box: Box, fleet: Fleet, tmp_path: Path
) -> None:
    archive = fleet.archive(fleet.sign(make_folder(tmp_path / "t", 2), "ops1"))
    data = archive.read_bytes()
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    uploads = box.manager.uploads
    session = uploads.open(UploadHeader("trunc", len(data), digest))
    session.write(data[: len(data) // 2])
    with pytest.raises(EdgeAgentError, match=f"upload truncated: {len(data) // 2} of"):
        session.finish()
    session = uploads.open(UploadHeader("over", len(data) - 10, digest))
    for i in range(0, len(data) - 10, 4096):
        session.write(data[i : min(i + 4096, len(data) - 10)])
    with pytest.raises(EdgeAgentError, match="exceeds its declared size"):
        session.write(data[-10:])
    session.close()
    with pytest.raises(EdgeAgentError, match="total_size: exceeds the limit"):
        uploads.open(UploadHeader("huge", 10**12, digest))
    box.assert_serving(1)


async def test_archive_beyond_size_limit_is_refused(tmp_path: Path, fleet: Fleet) -> None:
    b = Box(tmp_path, fleet)
    b.manager.config = small_config(max_bundle_bytes=8192, max_file_bytes=4096)
    archive = fleet.archive(
        fleet.sign(make_folder(tmp_path / "big", 1, payload=b"x" * 20000), "ops1")
    )
    with pytest.raises(EdgeAgentError, match=r"larger than the limit|too large"):
        await b.manager.install_archive(archive)
    assert b.manager.list_bundles() == []
