"""The ``edge-agent`` command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

import edge_agent
from edge_agent._offline import disable_phone_home
from edge_agent.client import (
    ChatOptions,
    Client,
    DataClass,
    RoutePreference,
    ToolCall,
    ToolSpec,
    tools_from_openai,
)
from edge_agent.config import DEFAULT_CONFIG_PATH, AgentConfig, default_config, load_config
from edge_agent.errors import EdgeAgentError, InvalidArgument
from edge_agent.tls import DEFAULT_ADMIN_SOCKET

__all__ = ["main"]

DEFAULT_TARGET = "127.0.0.1:50051"
_DATA_CLASSES = {c.name.lower(): c for c in DataClass if c is not DataClass.UNSPECIFIED}
_ROUTES = {"auto": RoutePreference.AUTO, "local": RoutePreference.LOCAL_ONLY,
           "large": RoutePreference.LARGE_MODEL}  # fmt: skip


DEMO_HTTP = "127.0.0.1:8080"


def _demo_config() -> AgentConfig:
    """Loopback, unprivileged: state under the user's home, the embedded model, and the
    OpenAI-compatible API open on loopback (any API key; OPENAI_BASE_URL works as is)."""
    config = default_config(Path.home() / ".local" / "state" / "edge-agent-demo")
    http = dataclasses.replace(config.http, listen=(DEMO_HTTP,), accept_any_token=True)
    return dataclasses.replace(config, http=http)


def _load(args: argparse.Namespace) -> AgentConfig:
    if getattr(args, "demo", False):
        return _demo_config()
    return load_config(Path(args.config))


def _cmd_serve(args: argparse.Namespace) -> int:
    from edge_agent.app import Agent
    from edge_agent.logsetup import setup_logging

    config = _load(args)
    if args.listen:
        config = dataclasses.replace(
            config, server=dataclasses.replace(config.server, listen=tuple(args.listen))
        )
    if args.http:
        config = dataclasses.replace(
            config, http=dataclasses.replace(config.http, listen=tuple(args.http))
        )
    setup_logging(config.logging)
    config_path = None if args.demo else Path(args.config)
    asyncio.run(Agent(config, config_path=config_path).run())
    return 0


def _read_tools(path: str | None) -> tuple[ToolSpec, ...]:
    """OpenAI's ``tools`` array from a JSON file (or one tool object)."""
    if path is None:
        return ()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return tools_from_openai(data if isinstance(data, list) else [data])
    except (OSError, ValueError) as exc:
        raise InvalidArgument("--tools", f"{path}: {exc}") from None


def _call_json(call: ToolCall) -> dict[str, object]:
    try:
        arguments: object = json.loads(call.arguments)
    except ValueError:
        arguments = call.arguments  # as the cloud sent it
    return {"id": call.id, "name": call.name, "arguments": arguments}


def _cmd_chat(args: argparse.Namespace) -> int:
    tools = _read_tools(args.tools)
    if args.tool_choice != "auto" and not tools:
        raise InvalidArgument("--tool-choice", "needs --tools")
    options = ChatOptions(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        stop=args.stop or (),
        json_schema=args.json_schema,
        data_class=_DATA_CLASSES[args.data_class] if args.data_class else DataClass.UNSPECIFIED,
        route=_ROUTES[args.route],
        model=args.model or "",
        tools=tools,
        tool_choice=args.tool_choice,
    )
    messages = [("system", args.system)] if args.system else []
    messages.append(("user", args.prompt))
    with Client(_target(args), token=_token(args)) as client:
        final = None
        calls: list[ToolCall] = []
        wrote = False
        for chunk in client.chat(messages, options, timeout=args.timeout):
            sys.stdout.write(chunk.delta)
            sys.stdout.flush()
            wrote = wrote or bool(chunk.delta)
            calls.extend(chunk.tool_calls)
            if chunk.finish_reason is not None:
                final = chunk
        if wrote or not calls:
            sys.stdout.write("\n")
        if calls:
            # One JSON line, so scripts can pipe the calls (arguments decoded).
            print(json.dumps([_call_json(c) for c in calls], ensure_ascii=False))
    if final is not None and final.provenance and final.usage and args.verbose:
        p, u = final.provenance, final.usage
        where = f"{p.model} {p.model_version} on {p.execution_provider or p.cloud_provider}"
        print(
            f"[{final.finish_reason}; {u.prompt_tokens}+{u.completion_tokens} tokens; "
            f"{p.destination}: {where}; {p.decision_reason}]",
            file=sys.stderr,
        )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    with Client(_target(args), token=_token(args)) as client:
        status = client.status(timeout=args.timeout)
    data = MessageToDict(status, preserving_proto_field_name=True)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    model = status.active_model
    print(f"edge-agent {status.agent_version}: {status.engine.state}")
    print(f"  model:     {model.name} {model.version} ({model.execution_provider})")
    print(
        f"  engine:    {status.engine.active_requests} active, "
        f"{status.engine.queued_requests} queued, restarts {status.engine.restarts}"
        f" ({status.engine.wedged_restarts} wedged), last sign of life "
        f"{status.engine.last_sign_of_life_age_s:.1f} s ago"
    )
    if status.pressure.level:
        print(f"  pressure:  {status.pressure.level} {' '.join(status.pressure.reasons)}")
    c = status.connectivity
    if c.state:
        line = f"  cloud:     {c.state}" + (f" ({c.reason})" if c.reason else "")
        if c.retry_in_s > 0:
            line += f", retry in {c.retry_in_s:.0f} s"
        if c.last_probe_age_s >= 0:
            line += f", last probe {c.last_probe_age_s:.0f} s ago"
        print(line)
        if c.unavailable_models:
            print(f"  unavailable cloud models: {', '.join(c.unavailable_models)}")
    if status.tls_fingerprint_sha256:
        print(f"  tls:       sha256 {status.tls_fingerprint_sha256}")
    return 0


def _agent_config(args: argparse.Namespace) -> AgentConfig:
    """The box's config for operator commands run on the box (defaults when absent)."""
    path = Path(args.agent_config)
    if path.exists():
        return load_config(path)
    return default_config(Path("/var/lib/edge-agent"))


def _add_domain_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from edge_agent.audit import add_audit_commands
    from edge_agent.bundles.cli import add_bundle_commands, add_keys_commands
    from edge_agent.credentials import add_credentials_commands, add_device_key_command
    from edge_agent.discovery import add_discover_command
    from edge_agent.doctor import add_doctor_command
    from edge_agent.policy import add_policy_commands
    from edge_agent.tls import add_tls_commands

    add_bundle_commands(sub)
    keys = add_keys_commands(sub)
    add_device_key_command(keys, config=lambda a: _agent_config(a).credentials)
    add_credentials_commands(sub, config=lambda a: _agent_config(a).credentials)
    add_policy_commands(sub, config=lambda a: _agent_config(a).policy)
    add_audit_commands(sub, config=lambda a: _agent_config(a).audit)
    add_tls_commands(sub)
    add_discover_command(sub)
    add_doctor_command(sub)


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        default=None,
        help=f"host:port or unix:PATH of the daemon (default: the admin socket "
        f"{DEFAULT_ADMIN_SOCKET} when this user may use it, else {DEFAULT_TARGET})",
    )
    p.add_argument(
        "--token",
        default=None,
        help="client bearer token (default: $EDGE_AGENT_TOKEN; a token on the command line "
        "is visible to other users in ps)",
    )
    p.add_argument("--timeout", type=float, default=120.0)


def _target(args: argparse.Namespace) -> str:
    """On the box itself, root and the edge-agent group reach the daemon by its admin socket:
    loopback TCP needs a token (any local user can reach it, see docs/SECURITY.md)."""
    if args.target:
        return str(args.target)
    if args.token is None and os.access(DEFAULT_ADMIN_SOCKET, os.R_OK | os.W_OK):
        return f"unix:{DEFAULT_ADMIN_SOCKET}"
    return DEFAULT_TARGET


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("EDGE_AGENT_TOKEN") or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=edge_agent.__version__)
    parser.add_argument(
        "--agent-config",
        default=str(DEFAULT_CONFIG_PATH),
        help="the box's config, for commands that read its state (keys device, audit, ...)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    serve.add_argument("--demo", action="store_true", help="loopback demo on the embedded model")
    serve.add_argument("--listen", action="append", help="override server.listen (repeatable)")
    serve.add_argument(
        "--http", action="append", help="override http.listen, the OpenAI API (repeatable)"
    )
    serve.set_defaults(func=_cmd_serve)

    chat = sub.add_parser("chat", help="ask the daemon; the answer streams to the terminal")
    chat.add_argument("prompt")
    chat.add_argument("--system", default=None)
    chat.add_argument("--max-tokens", type=int, default=None)
    chat.add_argument("--temperature", type=float, default=None)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--stop", action="append")
    chat.add_argument("--json-schema", default=None, help="constrain the answer to this schema")
    chat.add_argument(
        "--data-class",
        choices=sorted(_DATA_CLASSES),
        default=None,
        help="how sensitive the prompt is (default: the policy's default class)",
    )
    chat.add_argument(
        "--route",
        choices=sorted(_ROUTES),
        default="auto",
        help="auto: the policy decides; local: never leave the box; large: ask for the cloud",
    )
    chat.add_argument("--model", default=None, help="a cloud model the policy allows")
    chat.add_argument(
        "--tools",
        default=None,
        metavar="FILE.json",
        help="functions the model may call: OpenAI's tools array; calls print as one JSON line",
    )
    chat.add_argument(
        "--tool-choice",
        default="auto",
        metavar="auto|none|required|NAME",
        help="required: at least one call; NAME: one call of that tool (default auto)",
    )
    chat.add_argument("-v", "--verbose", action="store_true", help="print provenance and usage")
    _client_args(chat)
    chat.set_defaults(func=_cmd_chat)

    status = sub.add_parser("status", help="show the daemon's status")
    status.add_argument("--json", action="store_true")
    _client_args(status)
    status.set_defaults(func=_cmd_status)
    _add_domain_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything imports onnxruntime: its built-in telemetry phones Microsoft otherwise.
    disable_phone_home()
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except EdgeAgentError as exc:
        print(f"edge-agent: {exc.message}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code_name = exc.code().name if hasattr(exc, "code") else "ERROR"
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"edge-agent: {code_name}: {detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
