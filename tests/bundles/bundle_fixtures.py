"""Shared helpers for the bundle tests: real keys, real signed folders, real archives."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge_agent.bundles import (
    BundlesConfig,
    KeyPair,
    TrustStore,
    generate_keypair,
    pack_bundle,
    sign_bundle,
)
from edge_agent.errors import EngineUnavailable

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "models" / "demo"


def demo_model_dir() -> Path | None:
    """The committed demo ONNX GenAI model, once the engine engineer has landed it."""
    for candidate in (DEMO_MODEL, DEMO_MODEL / "model"):
        if (candidate / "genai_config.json").is_file():
            return candidate
    return None


def bundle_doc(
    name: str = "demo",
    version: str = "1.0.0",
    release: int = 1,
    *,
    expires_at: datetime | str | None = "in 30 days",
    min_agent_version: str = "0.1.0",
) -> dict[str, Any]:
    """A valid bundle.json; boxes require an expiry, so there is one unless given None."""
    now = datetime.now(UTC).replace(microsecond=0)
    if isinstance(expires_at, str):
        expires_at = now + timedelta(days=30)
    return {
        "format": 1,
        "name": name,
        "version": version,
        "release": release,
        "created_at": (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if expires_at else None,
        "min_agent_version": min_agent_version,
        "model": {
            "architecture": "MistralForCausalLM",
            "quantization": "int4",
            "execution_providers": ["cpu"],
            "context_length": 2048,
            "num_layers": 2,
            "num_kv_heads": 2,
            "head_size": 16,
            "hidden_size": 64,
            "vocab_size": 1000,
            "kv_bytes_per_token": 2 * 2 * 2 * 16 * 4,
            "weights_bytes": 4096,
            "memory_estimate_bytes": 10**9,
        },
    }


def make_folder(
    root: Path,
    release: int = 1,
    *,
    name: str = "demo",
    payload: bytes | None = None,
    model_src: Path | None = None,
    **doc_kw: Any,
) -> Path:
    """An unsigned bundle folder: a model (copied demo model or synthetic files) + bundle.json."""
    folder = root / f"{name}-r{release}"
    if model_src is not None:
        shutil.copytree(model_src, folder)
        (folder / "bundle.json").unlink(missing_ok=True)
        shutil.rmtree(folder / "signatures", ignore_errors=True)
    else:
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(payload or (b"onnx-graph-%d" % release) * 64)
        (folder / "model.onnx.data").write_bytes(bytes(range(256)) * 16 + bytes([release % 256]))
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    doc = bundle_doc(name, f"1.{release}.0", release, **doc_kw)
    (folder / "bundle.json").write_text(json.dumps(doc, indent=2))
    return folder


@dataclass
class Fleet:
    """A fleet operator with keys, and a box config trusting some of them."""

    root: Path
    keys: dict[str, KeyPair] = field(default_factory=dict)

    def key(self, name: str) -> KeyPair:
        if name not in self.keys:
            self.keys[name] = generate_keypair(self.root / "keys", name)
        return self.keys[name]

    def sign(self, folder: Path, *signers: str) -> Path:
        for s in signers:
            sign_bundle(folder, self.key(s).private_key_path)
        return folder

    def archive(self, folder: Path) -> Path:
        out = folder.with_suffix(".tar")
        pack_bundle(folder, out)
        return out

    def trust(self, store_path: Path, *names: str, threshold: int | None = None) -> TrustStore:
        store = TrustStore(store_path)
        for n in names:
            store.trust(
                self.key(n).public_key_path.read_bytes(), frozenset({"bundle"}), n, threshold
            )
        return store


def small_config(**kw: Any) -> BundlesConfig:
    base: dict[str, Any] = {
        "max_bundle_bytes": 256 * 1024**2,
        "max_file_bytes": 128 * 1024**2,
        "max_files": 200,
        "upload_chunk_bytes": 64 * 1024,
        "free_space_margin_bytes": 0,
        "trial_load_timeout_seconds": 60,
        "health_probe_timeout_seconds": 60,
    }
    base.update(kw)
    return BundlesConfig(**base)


class FileHost:
    """Test double of the engine supervisor for tests that are about disk state, not models.

    It really opens the folder it is given (bundle.json and every model file must be readable)
    and remembers what is active, so "still serving the old bundle" is observable.
    """

    def __init__(self) -> None:
        self.active: Path | None = None
        self.active_release: int | None = None
        self.loads: list[Path] = []
        self.fail_trial: str | None = None
        self.fail_probe: str | None = None

    def _read(self, model_dir: Path) -> int:
        doc = json.loads((model_dir / "bundle.json").read_text())
        for p in model_dir.rglob("*"):
            if p.is_file():
                p.read_bytes()
        return int(doc["release"])

    async def trial_load(self, model_dir: Path) -> None:
        self.loads.append(model_dir)
        self._read(model_dir)
        if self.fail_trial:
            raise EngineUnavailable(self.fail_trial)

    async def switch_to(self, model_dir: Path) -> None:
        self.active = model_dir
        self.active_release = self._read(model_dir)

    async def health_probe(self) -> None:
        if self.active is None:
            raise EngineUnavailable("no model")
        if self.fail_probe:
            raise EngineUnavailable(self.fail_probe)
        assert self._read(self.active) == self.active_release


def run_installer(state: str, archive: str, also_rollback: bool) -> None:
    """Child process body for the crash test: what the daemon does on a push (maybe rollback).

    It lives here (preloaded by the forkserver) so a child starts in milliseconds.
    """
    import asyncio

    from edge_agent.bundles import BundleManager

    async def run() -> None:
        m = BundleManager(small_config(), state_dir=Path(state), host=FileHost())
        m.recover()
        await m.install_archive(Path(archive))
        if also_rollback:
            await m.rollback()

    asyncio.run(run())


def signed_model_archive(
    fleet: Fleet,
    model_dir: Path,
    root: Path,
    release: int,
    *,
    name: str = "edge-demo-mistral",
    break_model: bool = False,
) -> Path:
    """A copy of ``model_dir`` as bundle ``name`` 1.<release>.0 (expiring in 30 days),
    signed by the fleet's "ops" key and packed; ``break_model`` keeps the signature valid but
    makes the model unloadable."""
    folder = root / f"{name}-r{release}"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "bundle.json").read_text())
    expires = datetime.now(UTC) + timedelta(days=30)
    meta.update(
        name=name,
        version=f"1.{release}.0",
        release=release,
        expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2))
    if break_model:
        (folder / "model.onnx").write_bytes(b"not an onnx graph" * 100)
    fleet.sign(folder, "ops")
    archive = root / f"{name}-r{release}.tar"
    pack_bundle(folder, archive)
    return archive
