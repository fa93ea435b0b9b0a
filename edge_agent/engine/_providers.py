"""Execution-provider selection, run inside the engine worker.

The operator lists providers in order of preference; the first that is present in this
build *and* loads the model serves. Each failure is kept so GetStatus and the logs say why
a faster provider was passed over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LoadedModel", "ModelLoadError", "load_model"]


class ModelLoadError(Exception):
    """No provider could load the model."""


@dataclass
class LoadedModel:
    model: Any  # og.Model
    provider: str
    skipped: list[tuple[str, str]]  # (provider, why)


def _available(og: Any, provider: str) -> bool:
    probes = {
        "cpu": lambda: True,
        "cuda": og.is_cuda_available,
        "dml": og.is_dml_available,
        "qnn": og.is_qnn_available,
        "openvino": og.is_openvino_available,
        "webgpu": og.is_webgpu_available,
    }
    probe = probes.get(provider)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:
        return False


def session_overlay(
    intra_op_threads: int,
    max_batch_size: int,
    thread_spinning: bool = True,
    cpu_memory_arena: bool = False,
) -> dict[str, Any]:
    """The genai_config overlay that applies the daemon's engine settings."""
    # String options genai does not know by name reach onnxruntime as session config
    # entries. Spinning threads pick up the next operator at once (the faster decode);
    # force_spinning_stop ends the spin when a step's Run() returns, so between steps and
    # when idle the cores are the daemon's (measured: same decode, idle CPU as without spin).
    session: dict[str, Any] = {
        "session.intra_op.allow_spinning": "1" if thread_spinning else "0",
        "session.inter_op.allow_spinning": "1" if thread_spinning else "0",
        "session.force_spinning_stop": "1",
        # onnxruntime's CPU arena keeps the peak of a step's activations for the process's
        # life (bench model: +190 MiB after a burst of 762-token prefills, ~2 GB on the real
        # shape); without it they go back to malloc, which returns them (ARCHITECTURE.md
        # "Memory that returns").
        "enable_cpu_mem_arena": cpu_memory_arena,
    }
    if intra_op_threads > 0:
        session["intra_op_num_threads"] = intra_op_threads
    return {
        "engine": {"static_batching": {"max_batch_size": max_batch_size}},
        "model": {"decoder": {"session_options": session}},
    }


def load_model(
    og: Any,
    model_dir: Path,
    providers: Sequence[str],
    provider_options: Mapping[str, Mapping[str, str]],
    intra_op_threads: int,
    max_batch_size: int,
    thread_spinning: bool = True,
    cpu_memory_arena: bool = False,
) -> LoadedModel:
    skipped: list[tuple[str, str]] = []
    overlay = json.dumps(
        session_overlay(intra_op_threads, max_batch_size, thread_spinning, cpu_memory_arena)
    )
    for provider in providers:
        if not _available(og, provider):
            skipped.append((provider, "not available in this build or on this box"))
            continue
        try:
            config = og.Config(str(model_dir))
            config.clear_providers()
            if provider != "cpu":
                config.append_provider(provider)
                for key, value in provider_options.get(provider, {}).items():
                    config.set_provider_option(provider, key, value)
            config.overlay(overlay)
            model = og.Model(config)
        except Exception as exc:
            skipped.append(
                (provider, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
            )
            continue
        return LoadedModel(model=model, provider=provider, skipped=skipped)
    reasons = "; ".join(f"{p}: {why}" for p, why in skipped) or "no provider configured"
    raise ModelLoadError(f"no execution provider could load the model ({reasons})")
