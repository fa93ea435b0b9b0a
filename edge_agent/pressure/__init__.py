"""Resource pressure: the monitor, its snapshots and levels, and memory-aware admission.

See docs/PRESSURE.md for what is measured, the thresholds and how admission decides.
"""

from __future__ import annotations

from edge_agent.pressure._admission import (
    AdmissionController,
    AdmissionStats,
    Ticket,
    context_from_genai_config,
    estimate_request_bytes,
    kv_bytes_per_token,
    kv_bytes_per_token_from_genai_config,
    read_genai_config,
)
from edge_agent.pressure._config import AdmissionConfig, PressureConfig, parse_pressure_config
from edge_agent.pressure._levels import SIGNALS, LevelTracker, Signal, SignalThreshold
from edge_agent.pressure._monitor import PressureMonitor, Sampler
from edge_agent.pressure._types import (
    AcceleratorMemory,
    EngineLoad,
    MemoryReading,
    PressureLevel,
    PressureSnapshot,
    PsiReadings,
    PsiResource,
    PsiStats,
    Temperature,
)

__all__ = [
    "SIGNALS",
    "AcceleratorMemory",
    "AdmissionConfig",
    "AdmissionController",
    "AdmissionStats",
    "EngineLoad",
    "LevelTracker",
    "MemoryReading",
    "PressureConfig",
    "PressureLevel",
    "PressureMonitor",
    "PressureSnapshot",
    "PsiReadings",
    "PsiResource",
    "PsiStats",
    "Sampler",
    "Signal",
    "SignalThreshold",
    "Temperature",
    "Ticket",
    "context_from_genai_config",
    "estimate_request_bytes",
    "kv_bytes_per_token",
    "kv_bytes_per_token_from_genai_config",
    "parse_pressure_config",
    "read_genai_config",
]
