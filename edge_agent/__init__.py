"""edge-agent: private LLM inference on edge boxes."""

__all__ = ["__version__"]

__version__ = "0.1.0"
