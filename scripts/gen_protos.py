"""Generate edge_agent/_proto from proto/ (messages, gRPC stubs and typing stubs).

python scripts/gen_protos.py            # regenerate in place
python scripts/gen_protos.py --check    # fail if the committed code is stale (CI)
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_PKG = ROOT / "edge_agent" / "_proto"


def _generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    bindir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Generated modules import "edge_agent.v1.x_pb2"; they live under edge_agent._proto.
    for path in out.rglob("*.py*"):
        text = path.read_text()
        text = text.replace(
            "from edge_agent.v1 import", "from edge_agent._proto.edge_agent.v1 import"
        )
        text = text.replace("import edge_agent.v1.", "import edge_agent._proto.edge_agent.v1.")
        path.write_text(text)
    for pkg in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (pkg / "__init__.py").touch()


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(
        p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    files_b = sorted(
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    if files_a != files_b:
        return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "_proto"
        out.mkdir()
        _generate(out)
        if args.check:
            if not _same_tree(out, OUT_PKG):
                print(
                    "edge_agent/_proto is stale: run python scripts/gen_protos.py", file=sys.stderr
                )
                return 1
            print("edge_agent/_proto is up to date")
            return 0
        shutil.rmtree(OUT_PKG, ignore_errors=True)
        shutil.copytree(out, OUT_PKG)
    print(f"generated {OUT_PKG.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
