"""The dashboard's web app: JSON endpoints over `payloads`, the four pages that draw them, Plotly's script
from the installed `plotly` package (no CDN: it works offline), and a token gate for non-loopback binds.

Every endpoint only reads. Pages carry no store data in their HTML beyond the names in their URL (Jinja2
escapes them); the scripts fetch JSON and put every string into the page as text, never as markup.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import socket
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from evosearch.errors import UsageError
from evosearch.views.dashboard import payloads
from evosearch.views.dashboard.payloads import JobViews
from evosearch.views.dashboard.stores import StoreSet, UnknownStore
from evosearch.views.scores import QueryError
from storage import StoreError

HERE = Path(__file__).resolve().parent
PLOTLY_JS = files("plotly") / "package_data" / "plotly.min.js"
TOKEN_COOKIE = "evosearch_dashboard_token"
# Scripts only from this server (no inline script, no eval); Plotly sets inline styles as it draws.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenGate:
    """Every request needs the token: `Authorization: Bearer TOKEN`, the cookie, or `?token=TOKEN` once
    (answered by a redirect that sets the cookie, HttpOnly and SameSite=Strict, and drops it from the URL)."""

    def __init__(self, app, token: str):
        self.app, self._token = app, token.encode()

    def _matches(self, given: Optional[str]) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        bearer = request.headers.get("authorization", "")
        if self._matches(bearer.removeprefix("Bearer ").strip() if bearer.startswith("Bearer ") else None) or \
                self._matches(request.cookies.get(TOKEN_COOKIE)):
            return await self.app(scope, receive, send)
        if self._matches(request.query_params.get("token")):
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self._token.decode(), httponly=True, samesite="strict")
        else:
            response = PlainTextResponse("token required: open the dashboard's address with ?token=TOKEN, or send "
                                         "Authorization: Bearer TOKEN", status_code=401)
        await response(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def create_app(stores: StoreSet, token: Optional[str] = None) -> Starlette:
    """The app over `stores`; with `token`, every request must carry it (see `TokenGate`)."""
    views = JobViews(stores)
    templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape is on for .html

    def job_view(request: Request):
        return views.open(request.path_params["store"], request.path_params["job"])

    def api(build: Callable[[Request], Any]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            return JSONResponse(build(request), headers={"cache-control": "no-store"})
        return endpoint

    def page(template: str, check: Optional[Callable[[Request], Any]] = None) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            if check is not None:
                check(request)  # a job or candidate that does not exist is a 404 page, not an empty one
            return templates.TemplateResponse(request, template, {"params": request.path_params})
        return endpoint

    def generation(request: Request) -> Optional[int]:
        raw = request.query_params.get("generation")
        if raw in (None, ""):
            return None
        if not raw.lstrip("-").isdigit():
            raise QueryError(f"generation must be a whole number, not {raw!r}")
        return int(raw)

    def candidate(request: Request) -> dict:
        return payloads.candidate_payload(job_view(request), request.path_params["candidate"])

    job = "/jobs/{store}/{job}"
    routes = [
        Route("/", page("jobs.html")),
        Route(job, page("job.html", job_view)),
        Route(job + "/workers", page("workers.html", job_view)),
        Route(job + "/candidates/{candidate:int}", page("candidate.html", candidate)),
        Route("/api/jobs", api(lambda request: payloads.jobs_payload(stores))),
        Route("/api/calibrations", api(lambda request: payloads.calibrations_payload(stores))),
        Route("/api" + job, api(lambda request: payloads.job_payload(job_view(request)))),
        Route("/api" + job + "/candidates", api(lambda request: payloads.candidates_payload(job_view(request)))),
        Route("/api" + job + "/front",
              api(lambda request: payloads.front_payload(job_view(request), generation(request)))),
        Route("/api" + job + "/convergence", api(lambda request: payloads.convergence_payload(job_view(request)))),
        Route("/api" + job + "/workers", api(lambda request: payloads.workers_payload(job_view(request)))),
        Route("/api" + job + "/candidates/{candidate:int}", api(candidate)),
        Route("/vendor/plotly.min.js", lambda request: FileResponse(
            str(PLOTLY_JS), media_type="text/javascript", headers={"cache-control": "public, max-age=86400"})),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    def failure(status: int) -> Callable[[Request, Exception], Response]:
        def handler(request: Request, exc: Exception) -> Response:
            message = str(exc)
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": message}, status_code=status)
            return templates.TemplateResponse(request, "error.html", {"message": message, "status": status,
                                                                      "params": request.path_params},
                                              status_code=status)
        return handler

    middleware = [Middleware(SecurityHeaders), Middleware(GZipMiddleware, minimum_size=1024)]
    if token:
        middleware.insert(1, Middleware(TokenGate, token=token))
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        stores.close()

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={QueryError: failure(404), UnknownStore: failure(404),
                                         UsageError: failure(400), StoreError: failure(503)})


class DashboardServer:
    """The app on a socket bound at construction (a taken port fails here, before anything is served;
    port 0 picks a free one): `serve()` blocks, `start()`/`stop()` run it in a thread."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 8765):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family)
        self.host, self.port = host, self._socket.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self, timeout_s: float = 30.0) -> "DashboardServer":
        self._thread = threading.Thread(target=self.serve, name="evosearch-dashboard", daemon=True)
        self._thread.start()
        self._thread.join(0.05)
        waited = 0.0
        while not self._server.started and self._thread.is_alive() and waited < timeout_s:
            self._thread.join(0.05)
            waited += 0.05
        if not self._server.started:
            raise RuntimeError(f"the dashboard did not start on {self.url}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        self._socket.close()
