"""The OpenAI-compatible HTTP API: a second front end over the one chat path.

Starlette routes translate OpenAI chat completions to :class:`edge_agent.chat.ChatSpec` and
back; uvicorn serves them on the daemon's event loop (``[http]`` in the config).
"""

from edge_agent.openai_api._app import ChatHandler, ModelEntry, build_app
from edge_agent.openai_api._auth import HttpAuth
from edge_agent.openai_api._server import HttpServer, needs_tls

__all__ = [
    "ChatHandler",
    "HttpAuth",
    "HttpServer",
    "ModelEntry",
    "build_app",
    "needs_tls",
]
