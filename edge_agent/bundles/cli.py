"""``edge-agent bundle ...`` and ``edge-agent keys ...``: operator tooling (argparse builders).

Each command is a function of the parsed args returning an exit code: 0 success, 1 refused
or failed (the reason on stderr), 2 usage errors (argparse's own).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge_agent._operator_cli import add_target_arguments, parse_duration, target_from_args
from edge_agent.bundles._admission import BoxRules, check_bundle
from edge_agent.bundles._archive import ArchiveLimits, pack_bundle, unpack_bundle
from edge_agent.bundles._build import BuildRequest, build_bundle
from edge_agent.bundles._config import BundlesConfig
from edge_agent.bundles._format import (
    BundleManifest,
    agent_version,
    format_time,
    load_manifest,
)
from edge_agent.bundles._keys import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    public_key_pem,
)
from edge_agent.bundles._signing import sign_bundle
from edge_agent.bundles._store import SlotStore
from edge_agent.bundles._truststore import (
    ROLES,
    TrustDocument,
    TrustedKey,
    TrustStore,
    TrustUpdate,
    sign_trust_update,
)
from edge_agent.errors import EdgeAgentError, InvalidArgument

__all__ = ["add_bundle_commands", "add_keys_commands"]

Handler = Callable[[argparse.Namespace], int]
_GIB = 1024**3


def _guard(fn: Handler) -> Handler:
    """Our errors become one line on stderr and exit code 1; never a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except EdgeAgentError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"error: {exc.strerror or exc}", file=sys.stderr)
            return 1

    run.__doc__ = fn.__doc__
    return run


def _password(args: argparse.Namespace) -> bytes | None:
    if getattr(args, "password_file", None):
        return bytes(Path(args.password_file).read_bytes().strip())
    if getattr(args, "ask_password", False):
        return getpass.getpass("key password: ").encode()
    return None


def _roles(text: str) -> frozenset[str]:
    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    if not roles or not roles <= ROLES:
        raise argparse.ArgumentTypeError(f"roles must be a subset of {sorted(ROLES)}")
    return roles


def _utc_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            "expected an ISO-8601 time, e.g. 2027-01-31T00:00Z"
        ) from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# -- bundle ---------------------------------------------------------------------------------
def _cmd_build(args: argparse.Namespace) -> int:
    if (args.source is None) == (args.from_hf is None):
        raise InvalidArgument("source", "give an ONNX GenAI folder or --from-hf CHECKPOINT")
    req = BuildRequest(
        source=args.from_hf or args.source,
        out=args.out,
        name=args.name,
        version=args.version,
        release=args.release,
        execution_provider=args.ep,
        precision=args.precision,
        expires_in=args.expires_in,
        min_agent_version=args.min_agent_version,
    )
    # Asked before a build that may take hours, not after it.
    password = _password(args) if args.sign and not args.dry_run else None
    if args.from_hf is not None:
        manifest = _build_from_hf(args, req)
        if manifest is None:
            return 0
    else:
        recipe_only = ("--context", "--dry-run", "--force", "--builder-option", "--max-batch-size")
        given = (args.context, args.dry_run, args.force, args.builder_option, args.max_batch_size)
        for flag, value in zip(recipe_only, given, strict=True):
            if value:
                raise InvalidArgument(flag, "only with --from-hf")
        manifest = build_bundle(req)
    for key in args.sign or ():
        sign_bundle(args.out, key, password=password)
    print(manifest.to_json().decode(), end="")
    return 0


def _build_from_hf(args: argparse.Namespace, req: BuildRequest) -> BundleManifest | None:
    """The recipe (edge_agent/bundles/_recipe.py); None after a dry run."""
    from edge_agent.bundles._recipe import Recipe, build_from_checkpoint, plan_recipe

    if args.context is None:
        raise InvalidArgument("--context", "required with --from-hf (tokens per request)")
    if args.precision != "int4":
        raise InvalidArgument("--precision", "the --from-hf recipe builds int4")
    recipe = Recipe(
        checkpoint=args.from_hf,
        context=args.context,
        execution_provider=args.ep,
        max_batch_size=16 if args.max_batch_size is None else args.max_batch_size,
        options=tuple(args.builder_option or ()),
    )
    plan = plan_recipe(recipe, args.out)
    # The plan is the dry run's answer (stdout); otherwise progress (stderr), so stdout
    # stays the bundle.json a script can read.
    stream = sys.stdout if args.dry_run else sys.stderr
    for line in plan.describe():
        print(line, file=stream)
    if args.dry_run:
        print(f"bundle: {args.out} (bundle.json, {len(args.sign or ())} signature(s))")
        return None
    return build_from_checkpoint(req, plan, force=args.force, progress=not args.quiet)


def _cmd_estimate(args: argparse.Namespace) -> int:
    from edge_agent.bundles._estimate import estimate, estimate_table

    try:
        config = json.loads(args.config.read_text(encoding="utf-8"))
        if args.markdown:
            print(estimate_table(config))
        else:
            _print(estimate(config, args.ep, args.block_size))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidArgument("--config", f"not a decoder's config.json ({exc})") from exc
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    path = sign_bundle(args.folder, args.key, password=_password(args))
    print(f"signed: {path.relative_to(args.folder)}")
    return 0


def _box_rules(args: argparse.Namespace) -> tuple[TrustDocument, BoxRules, ArchiveLimits]:
    """The rules of the box ``--config`` describes, else of a default box with these keys."""
    version = args.agent_version or agent_version()
    if args.config is not None:
        from edge_agent.config import load_config

        config = load_config(args.config)
        bundles = config.bundles
        paths = bundles.paths(config.paths.state_dir)
        doc = TrustStore(args.trust_store or paths.trust_store).load()
        store = SlotStore(paths.root)
        # On the box itself its release counter applies; elsewhere it cannot be known.
        floor = store.release_floor() if store.releases_path.exists() else None
        rules = BoxRules(
            max(args.threshold or 1, bundles.threshold), bundles.require_expiry, version, floor
        )
        limits = ArchiveLimits(bundles.max_bundle_bytes, bundles.max_file_bytes, bundles.max_files)
        return doc, rules, limits
    defaults = BundlesConfig()
    limits = ArchiveLimits(args.max_bytes, args.max_bytes, defaults.max_files)
    require_expiry = not args.lab
    if args.trust_store:
        doc = TrustStore(args.trust_store).load()
        return doc, BoxRules(args.threshold or 1, require_expiry, version, None), limits
    if not args.public_key:
        raise InvalidArgument("--public-key", "give --config, --trust-store or at least one key")
    keys = []
    for path in args.public_key:
        pub = load_public_key(path.read_bytes())
        keys.append(TrustedKey(key_id(pub), frozenset({"bundle"}), public_key_pem(pub)))
    doc = TrustDocument(keys=tuple(keys))
    return doc, BoxRules(args.threshold or 1, require_expiry, version, None), limits


def _cmd_verify(args: argparse.Namespace) -> int:
    """The box's own admission code, offline: rc 0 only for what the box would accept."""
    doc, rules, limits = _box_rules(args)
    now = args.at or datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="edge-agent-verify-") as tmp:
        folder = args.path
        try:
            if args.path.is_file():  # an archive: unpack it with the box's own limits first
                folder = Path(tmp) / "bundle"
                unpack_bundle(args.path, folder, limits)
            manifest, report = check_bundle(folder, doc, rules, now=now)
        except EdgeAgentError as exc:
            text = exc.message
            print(text if text.startswith("refused:") else f"refused: {text}")
            return 1
    print(report.summary())
    print(f"bundle: {manifest.name} {manifest.version} release {manifest.release}")
    expiry = format_time(manifest.expires_at) if manifest.expires_at else "never (lab box only)"
    print(
        f"expires: {expiry}; needs agent >= {manifest.min_agent_version} (checked against "
        f"{rules.running_version})"
    )
    if rules.release_floor is None:
        print(
            "anti-rollback: not checked here (the box refuses releases <= the highest it has "
            "committed, of any bundle name)"
        )
    else:
        print(f"anti-rollback: release {manifest.release} > {rules.release_floor} on this box")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    load_manifest(args.folder)
    size = pack_bundle(args.folder, args.out)
    print(f"packed {size} bytes into {args.out}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from edge_agent.bundles._push_client import push_archive

    res = push_archive(
        target_from_args(args),
        args.archive,
        activate=not args.no_activate,
        chunk_bytes=args.chunk_kib * 1024,
        progress=not args.quiet,
    )
    _print({"outcome": res.outcome, "bundle": res.bundle, "attempts": res.attempts})
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from edge_agent.bundles._push_client import rollback_remote

    _print(rollback_remote(target_from_args(args)))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from edge_agent.bundles._push_client import list_remote_state

    bundles, problem = list_remote_state(target_from_args(args))
    _print(bundles)
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def _sub(sub: Any, name: str, fn: Handler, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(func=_guard(fn))
    return p


def _password_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--password-file", type=Path, help="file holding the key's password")
    g.add_argument("--ask-password", action="store_true", help="prompt for the key's password")


def add_bundle_commands(subparsers: Any) -> None:
    """Add ``bundle build|estimate|sign|verify|pack|push|rollback|list`` to the main CLI."""
    bundle = subparsers.add_parser("bundle", help="build, sign, verify and push model bundles")
    sub = bundle.add_subparsers(dest="bundle_command", required=True)

    p = _sub(
        sub,
        "build",
        _cmd_build,
        "describe an ONNX GenAI folder as a bundle, or build one from a Hugging Face "
        "checkpoint (--from-hf: the build extra's recipe)",
    )
    p.add_argument("source", type=Path, nargs="?", help="ONNX GenAI folder")
    p.add_argument(
        "--from-hf", type=Path, metavar="CHECKPOINT", help="Hugging Face checkpoint folder"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--release", type=int, required=True, help="anti-rollback counter")
    p.add_argument(
        "--ep", default="cpu", help="execution provider: cpu, cuda, dml, webgpu (default cpu)"
    )
    p.add_argument("--precision", default="int4", choices=["int4", "fp16", "fp32", "bf16"])
    p.add_argument(
        "--context",
        type=int,
        help="--from-hf: tokens served per request (search.max_length = context_length)",
    )
    p.add_argument("--max-batch-size", type=int, help="--from-hf: static batch (default 16)")
    p.add_argument(
        "--builder-option",
        action="append",
        metavar="KEY=VALUE",
        help="--from-hf: one more builder option (block_size=128, algo_config=k_quant, ...)",
    )
    p.add_argument("--dry-run", action="store_true", help="--from-hf: print the plan, run nothing")
    p.add_argument("--force", action="store_true", help="--from-hf: build despite too little RAM")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--expires-in", type=parse_duration, default=timedelta(days=365), help="default 365d"
    )
    g.add_argument(
        "--no-expiry",
        dest="expires_in",
        action="store_const",
        const=None,
        help="never expires: only lab boxes ([bundles] require_expiry = false) accept it",
    )
    p.add_argument("--min-agent-version", default="0.1.0")
    p.add_argument("--sign", type=Path, action="append", help="private key (repeatable)")
    p.add_argument("--quiet", action="store_true")
    _password_args(p)

    p = _sub(
        sub,
        "estimate",
        _cmd_estimate,
        "memory figures of an int4 export from a Hugging Face config.json (no download)",
    )
    p.add_argument("--config", type=Path, required=True, help="Hugging Face config.json")
    p.add_argument("--ep", default="cpu", help="execution provider: cpu, cuda, ...")
    p.add_argument("--block-size", type=int, default=32, help="int4 quantization block")
    p.add_argument("--markdown", action="store_true", help="the table used in the docs")

    p = _sub(sub, "sign", _cmd_sign, "add signatures/<key-id>.sig to a bundle folder")
    p.add_argument("folder", type=Path)
    p.add_argument("--key", type=Path, required=True, help="EC P-256 private key (PEM)")
    _password_args(p)

    p = _sub(
        sub,
        "verify",
        _cmd_verify,
        "judge a bundle folder or archive offline exactly as a box would (signatures, "
        "threshold, expiry, minimum agent version; anti-rollback when run on the box)",
    )
    p.add_argument("path", type=Path)
    p.add_argument("--config", type=Path, help="the box's agent.toml: its trust store and rules")
    p.add_argument("--trust-store", type=Path)
    p.add_argument("--public-key", type=Path, action="append")
    p.add_argument("--threshold", type=int, default=None)
    p.add_argument("--max-bytes", type=int, default=64 * _GIB)
    p.add_argument(
        "--agent-version", default=None, help="judge for this agent version (default: this one)"
    )
    p.add_argument("--at", type=_utc_time, default=None, help="judge at this UTC time (ISO)")
    p.add_argument("--lab", action="store_true", help="a lab box: accept bundles without expiry")

    p = _sub(sub, "pack", _cmd_pack, "pack a signed bundle folder into one tar archive")
    p.add_argument("folder", type=Path)
    p.add_argument("out", type=Path)

    p = _sub(sub, "push", _cmd_push, "upload an archive to a box (resumable)")
    p.add_argument("archive", type=Path)
    p.add_argument("--no-activate", action="store_true", help="install into the spare slot")
    p.add_argument("--chunk-kib", type=int, default=1024)
    p.add_argument("--quiet", action="store_true")
    add_target_arguments(p)

    p = _sub(sub, "rollback", _cmd_rollback, "switch a box back to its previous bundle")
    add_target_arguments(p)
    p = _sub(sub, "list", _cmd_list, "list a box's installed bundles")
    add_target_arguments(p)


# -- keys -----------------------------------------------------------------------------------
def _cmd_generate(args: argparse.Namespace) -> int:
    kp = generate_keypair(args.out_dir, args.name, password=_password(args))
    print(f"private key: {kp.private_key_path} (0600)\npublic key:  {kp.public_key_path}")
    print(f"key id:      {kp.key_id}")
    return 0


def _cmd_trust(args: argparse.Namespace) -> int:
    doc = TrustStore(args.store).trust(
        args.public_key.read_bytes(), args.roles, args.label, args.threshold
    )
    print(f"trust store version {doc.version}: {len(doc.keys)} key(s), threshold {doc.threshold}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    doc = TrustStore(args.store).revoke(args.key_id)
    print(f"trust store version {doc.version}: {len(doc.revoked)} revoked key(s)")
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    doc = TrustStore(args.store).load()
    _print(
        {
            "version": doc.version,
            "threshold": doc.threshold,
            "keys": [
                {"key_id": k.key_id, "roles": sorted(k.roles), "label": k.label} for k in doc.keys
            ],
            "revoked": sorted(doc.revoked),
        }
    )
    return 0


def _cmd_propose(args: argparse.Namespace) -> int:
    cur = TrustStore(args.store).load()
    keys = {k.key_id: k for k in cur.keys if k.key_id not in set(args.remove or ())}
    for spec in args.add or ():
        path, _, roles = str(spec).partition(":")
        pub = load_public_key(Path(path).read_bytes())
        kid = key_id(pub)
        keys[kid] = TrustedKey(kid, _roles(roles or "bundle"), public_key_pem(pub))
    revoked = cur.revoked | frozenset(args.revoke or ())
    new = TrustDocument(
        version=cur.version + 1,
        threshold=args.threshold or cur.threshold,
        keys=tuple(keys[k] for k in sorted(keys) if k not in revoked),
        revoked=revoked,
    )
    TrustDocument.from_json(new.to_json())  # validate before anyone signs it
    args.out.write_bytes(TrustUpdate(new.to_json()).to_json())
    print(f"proposed trust store version {new.version}; now sign it with {cur.threshold} key(s)")
    return 0


def _cmd_rotate_sign(args: argparse.Namespace) -> int:
    update = TrustUpdate.from_json(args.update.read_bytes())
    update = sign_trust_update(update, load_private_key(args.key, _password(args)))
    args.update.write_bytes(update.to_json())
    print(f"update now carries {len(update.signatures)} signature(s)")
    return 0


def _cmd_rotate_apply(args: argparse.Namespace) -> int:
    doc = TrustStore(args.store).apply_update(TrustUpdate.from_json(args.update.read_bytes()))
    print(f"trust store version {doc.version} accepted")
    return 0


def add_keys_commands(subparsers: Any) -> Any:
    """Add ``keys generate|trust|revoke|list|rotate {propose,sign,apply}`` to the main CLI.

    Returns the ``keys`` sub-command group so other packages can add to it (``keys device``).
    """
    keys = subparsers.add_parser("keys", help="signing keys and the box's trust store")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    p = _sub(sub, "generate", _cmd_generate, "generate an EC P-256 key pair (PEM)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    _password_args(p)

    p = _sub(sub, "trust", _cmd_trust, "add a public key to a trust store (local admin)")
    p.add_argument("public_key", type=Path)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--roles", type=_roles, default=frozenset({"bundle"}))
    p.add_argument("--label", default="")
    p.add_argument("--threshold", type=int, default=None)

    p = _sub(sub, "revoke", _cmd_revoke, "revoke a key id (local admin, always allowed)")
    p.add_argument("key_id")
    p.add_argument("--store", type=Path, required=True)

    p = _sub(sub, "list", _cmd_keys_list, "show a trust store")
    p.add_argument("--store", type=Path, required=True)

    rotate = sub.add_parser("rotate", help="signed trust-store updates (key rotation)")
    rsub = rotate.add_subparsers(dest="rotate_command", required=True)
    p = _sub(rsub, "propose", _cmd_propose, "write an unsigned update from a current store")
    p.add_argument("--store", type=Path, required=True, help="the current trust store")
    p.add_argument("--add", action="append", help="PUB.pem[:role,role] to trust")
    p.add_argument("--remove", action="append", help="key id to drop")
    p.add_argument("--revoke", action="append", help="key id to revoke")
    p.add_argument("--threshold", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    p = _sub(rsub, "sign", _cmd_rotate_sign, "add one current key's signature to an update")
    p.add_argument("update", type=Path)
    p.add_argument("--key", type=Path, required=True)
    _password_args(p)
    p = _sub(rsub, "apply", _cmd_rotate_apply, "apply an update signed by the current threshold")
    p.add_argument("update", type=Path)
    p.add_argument("--store", type=Path, required=True)
    return sub
