"""No phone-home: the switches that keep bundled libraries from talking to their vendors.

The onnxruntime and onnxruntime-genai Linux wheels carry telemetry of their own: about 10 s
after the first session they resolve ``mobile.events.data.microsoft.com`` and open TLS to
it, and they queue events (a device id, OS, CPU, executable path, error texts) under
``$HOME/.cache/Microsoft/``. ``ORT_DISABLE_TELEMETRY=1`` in the environment before the
library loads stops both (measured, see docs/SECURITY.md). The Hugging Face libraries are
only used to build models, never by the daemon, but ``bundle build`` imports them: they get
their offline and no-telemetry switches too.

Every process the package runs sets these itself (the CLI's entry point, the engine
worker's, and the environment the supervisor gives the worker), so no unit file, shell or
operator setting is needed for them to hold. Values are forced, not defaulted: an operator's
``ORT_DISABLE_TELEMETRY=0`` is not a way to turn telemetry back on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

__all__ = ["PHONE_HOME_SWITCHES", "disable_phone_home", "offline_environment"]

PHONE_HOME_SWITCHES: Mapping[str, str] = {
    # onnxruntime / onnxruntime-genai built-in telemetry (1DS to Microsoft).
    "ORT_DISABLE_TELEMETRY": "1",
    # huggingface_hub: no hub calls, no telemetry pings (bundle build, model making).
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    # transformers / datasets: offline mode (no model or config downloads).
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    # Community convention honoured by several libraries (e.g. gradio, some SDKs).
    "DO_NOT_TRACK": "1",
}


def disable_phone_home(environ: MutableMapping[str, str] | None = None) -> None:
    """Force every switch into ``environ`` (this process's environment by default).

    Call before onnxruntime or any Hugging Face library is imported: they read the
    environment when they load.
    """
    target = os.environ if environ is None else environ
    target.update(PHONE_HOME_SWITCHES)


def offline_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (this process's environment by default) with every switch forced."""
    env = dict(os.environ if base is None else base)
    disable_phone_home(env)
    return env
