"""Readings that come from libraries rather than /proc: temperatures and accelerator memory.

Both are optional by nature. psutil reads hwmon/thermal zones where the board exposes them;
NVML exists only where an NVIDIA driver is installed. When either is missing the reading is
an empty tuple, never a made-up number.
"""

from __future__ import annotations

import logging
from typing import Any

import psutil

from edge_agent.pressure._types import AcceleratorMemory, Temperature

__all__ = ["NvmlMemory", "read_temperatures"]

_log = logging.getLogger(__name__)


def read_temperatures() -> tuple[Temperature, ...]:
    """Every sensor psutil can see, as ``chip/label`` (``chip/N`` when unlabelled)."""
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is None:  # not provided on this platform
        return ()
    try:
        groups: dict[str, list[Any]] = sensors()
    except (OSError, RuntimeError):
        return ()
    out: list[Temperature] = []
    for chip, entries in sorted(groups.items()):
        for i, entry in enumerate(entries):
            current = entry.current
            if current is None:
                continue
            label = entry.label or str(i)
            out.append(Temperature(sensor=f"{chip}/{label}", celsius=float(current)))
    return tuple(out)


class NvmlMemory:
    """Device memory through NVML (``pynvml`` from nvidia-ml-py), only where it initialises."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[tuple[int, str, Any]] = []

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def open(self) -> bool:
        """Initialise NVML; ``False`` (and quietly nothing) on a box without it."""
        try:
            import pynvml
        except ImportError:
            return False
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            _log.debug("NVML not available: %s", exc)
            return False
        try:
            handles = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                if isinstance(name, bytes):  # older bindings return bytes
                    name = name.decode("utf-8", "replace")
                handles.append((index, str(name), handle))
        except pynvml.NVMLError as exc:
            _log.warning("NVML initialised but listing devices failed: %s", exc)
            pynvml.nvmlShutdown()
            return False
        self._nvml = pynvml
        self._handles = handles
        return True

    def read(self) -> tuple[AcceleratorMemory, ...]:
        nvml = self._nvml
        if nvml is None:
            return ()
        out: list[AcceleratorMemory] = []
        for index, name, handle in self._handles:
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError:
                # A device that fell off the bus reports nothing rather than stale numbers.
                continue
            out.append(
                AcceleratorMemory(
                    index=index, name=name, total_bytes=int(info.total), free_bytes=int(info.free)
                )
            )
        return tuple(out)

    def close(self) -> None:
        nvml, self._nvml = self._nvml, None
        self._handles = []
        if nvml is not None:
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                _log.debug("NVML shutdown failed: %s", exc)
