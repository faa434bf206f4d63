"""The common request's short way in: `POST /v1/chat/completions` goes straight to its handler.

Starlette's app reaches a handler through its error middleware, exception middleware, router (a regex per
route until one matches) and the route's own wrapper, ~60 Python calls per request before any of the
gateway's work. The handlers behind these paths answer every error themselves (an OpenAI error, and the
request's record), so for them those layers do nothing but cost; every other request, the lifespan and
anything mounted under a root path still go through the Starlette app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Handler = Callable[[Request], Awaitable[Response]]


class FastPaths:
    """An ASGI app: `(method, path)` in `paths` → that handler directly; anything else → `app`."""

    def __init__(self, app: Starlette, paths: Mapping[tuple[str, str], Handler]) -> None:
        self.app = app
        self._paths = dict(paths)

    @property
    def state(self) -> State:
        """The Starlette app's state."""
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            handler = self._paths.get((scope["method"], scope["path"]))
            if handler is not None:
                scope["app"] = self.app
                response = await handler(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
