"""The operator commands, run through argparse exactly as the main CLI will wire them."""

from __future__ import annotations

import argparse
import json
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent._operator_cli import OperatorTarget
from edge_agent.bundles._push_client import push_archive
from edge_agent.bundles.cli import add_bundle_commands, add_keys_commands
from edge_agent.errors import Unavailable


def _cli(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bundle_commands(sub)
    add_keys_commands(sub)
    args = parser.parse_args([str(a) for a in argv])
    code: int = args.func(args)
    return code


def _onnx_folder(root: Path) -> Path:
    folder = root / "onnx"
    folder.mkdir()
    genai = {
        "model": {
            "type": "mistral",
            "context_length": 4096,
            "vocab_size": 32768,
            "decoder": {
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "num_key_value_heads": 2,
                "head_size": 64,
                "hidden_size": 512,
            },
        }
    }
    (folder / "genai_config.json").write_text(json.dumps(genai))
    (folder / "model.onnx").write_bytes(b"g" * 1000)
    (folder / "model.onnx.data").write_bytes(b"w" * 50_000)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_keys_build_sign_pack_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys, store = tmp_path / "keys", tmp_path / "trust.json"
    assert _cli("keys", "generate", "--out-dir", keys, "--name", "ops1") == 0
    assert _cli("keys", "generate", "--out-dir", keys, "--name", "ops2") == 0
    assert stat.S_IMODE((keys / "ops1.key").stat().st_mode) == 0o600
    assert _cli("keys", "trust", keys / "ops1.pub", "--store", store, "--label", "ops1") == 0
    out = tmp_path / "bundle"
    rc = _cli(
        "bundle", "build", _onnx_folder(tmp_path), "--out", out, "--name", "mistral-small-3",
        "--version", "2501-int4", "--release", "7", "--expires-in", "180d", "--quiet",
        "--sign", keys / "ops1.key",
    )  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "bundle.json").read_text())
    assert doc["model"]["kv_bytes_per_token"] == 2 * 4 * 2 * 64 * 4  # fp32 KV on cpu
    assert doc["model"]["weights_bytes"] == 51_000
    assert doc["model"]["architecture"] == "MistralForCausalLM"  # from the genai type
    assert doc["expires_at"] is not None
    archive = tmp_path / "bundle.tar"
    assert _cli("bundle", "pack", out, archive) == 0
    capsys.readouterr()
    assert _cli("bundle", "verify", archive, "--trust-store", store) == 0
    assert "verified: 1 valid signature(s), 1 required" in capsys.readouterr().out
    assert _cli("bundle", "verify", out, "--trust-store", store, "--threshold", "2") == 1
    assert "refused: 1 valid signature(s), 2 required" in capsys.readouterr().out
    assert _cli("bundle", "sign", out, "--key", keys / "ops2.key") == 0
    assert _cli("bundle", "verify", out, "--public-key", keys / "ops1.pub",
                "--public-key", keys / "ops2.pub", "--threshold", "2") == 0  # fmt: skip
    (out / "model.onnx").write_bytes(b"evil")
    capsys.readouterr()
    assert _cli("bundle", "verify", out, "--trust-store", store) == 1
    assert "changed: model.onnx" in capsys.readouterr().out


def test_key_rotation_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys, store, update = tmp_path / "keys", tmp_path / "trust.json", tmp_path / "update.json"
    for n in ("old1", "old2", "new"):
        _cli("keys", "generate", "--out-dir", keys, "--name", n)
    _cli("keys", "trust", keys / "old1.pub", "--store", store)
    _cli("keys", "trust", keys / "old2.pub", "--store", store, "--threshold", "2")
    old1_id = json.loads(store.read_text())["keys"]
    old1 = next(k["key_id"] for k in old1_id if k["public_key"] == (keys / "old1.pub").read_text())
    assert _cli("keys", "rotate", "propose", "--store", store, "--add",
                f"{keys / 'new.pub'}:bundle,policy", "--revoke", old1, "--out", update) == 0  # fmt: skip
    assert _cli("keys", "rotate", "sign", update, "--key", keys / "old1.key") == 0
    capsys.readouterr()
    assert _cli("keys", "rotate", "apply", update, "--store", store) == 1
    assert "signed by 1 current key(s), 2 required" in capsys.readouterr().err
    assert _cli("keys", "rotate", "sign", update, "--key", keys / "old2.key") == 0
    assert _cli("keys", "rotate", "apply", update, "--store", store) == 0
    capsys.readouterr()
    assert _cli("keys", "list", "--store", store) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["revoked"] == [old1]
    assert len(listed["keys"]) == 2
    assert _cli("keys", "revoke", listed["keys"][0]["key_id"], "--store", store) == 0


def test_build_of_a_checkpoint_folder_points_to_the_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"]}))
    common: list[str | Path] = ["--out", tmp_path / "out", "--name", "m", "--version", "1"]
    common += ["--release", "1"]
    assert _cli("bundle", "build", hf, *common, "--quiet") == 1
    err = capsys.readouterr().err
    assert "is a Hugging Face checkpoint, not an ONNX GenAI folder" in err
    assert f"--from-hf {hf} --context TOKENS" in err
    # Recipe options make no sense for a folder that is already built: refused, not ignored.
    assert _cli("bundle", "build", _onnx_folder(tmp_path), *common, "--context", "4096") == 1
    assert "--context: only with --from-hf" in capsys.readouterr().err
    assert _cli("bundle", "build", hf, *common, "--from-hf", hf, "--context", "8") == 1
    assert "give an ONNX GenAI folder or --from-hf CHECKPOINT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_cli_and_the_recipe_never_import_the_build_extra() -> None:
    """The daemon's venv has no torch: importing the CLI, the bundles package and the recipe
    itself must not pull torch, transformers, mistral-common or the builder's onnx packages
    (checked where they are installed too: the build venv)."""
    code = (
        "import sys, edge_agent.cli, edge_agent.bundles, edge_agent.bundles.cli, "
        "edge_agent.bundles._recipe, edge_agent.bundles._estimate\n"
        "heavy = {'torch', 'transformers', 'mistral_common', 'onnx', 'onnx_ir', 'onnxscript'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
        "print('edge_agent.bundles._recipe' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.splitlines() == ["[]", "True"]


def test_build_of_the_demo_writes_the_shipped_facts(tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parents[2] / "models" / "demo"
    out = tmp_path / "demo"
    rc = _cli(
        "bundle", "build", demo, "--out", out, "--name", "edge-demo-mistral",
        "--version", "0.1.0", "--release", "1", "--no-expiry", "--quiet",
    )  # fmt: skip
    assert rc == 0
    built = json.loads((out / "bundle.json").read_text())
    shipped = json.loads((demo / "bundle.json").read_text())
    assert built["model"] == shipped["model"]
    assert built["expires_at"] is None
    # Without --no-expiry a build expires, so boxes (which require an expiry) take it.
    out2 = tmp_path / "demo2"
    rc = _cli(
        "bundle", "build", demo, "--out", out2, "--name", "edge-demo-mistral",
        "--version", "0.1.0", "--release", "2", "--quiet",
    )  # fmt: skip
    assert rc == 0
    assert json.loads((out2 / "bundle.json").read_text())["expires_at"] is not None


def test_push_to_an_unreachable_box_fails_at_once(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    archive = tmp_path / "x.tar"
    archive.write_bytes(b"\0" * 1024)
    waits: list[float] = []
    target = OperatorTarget(address=f"127.0.0.1:{port}", insecure=True, timeout_s=10)
    with pytest.raises(Unavailable, match="UNAVAILABLE"):
        push_archive(target, archive, progress=False, sleep=waits.append)
    assert waits == []  # no back-off rounds before telling the operator
