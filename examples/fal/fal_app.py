"""Deploys Scope on fal behind scope-router: one WebSocket per browser at /ws.

fal starts this container on a GPU runner and sends every request for the app to
`exposed_port`, where scope-router listens. The router starts and supervises
Scope (`uv run daydream-scope`, see routes.yaml), routes API calls and WebRTC
signaling over the one WebSocket, and stops Scope cleanly when fal stops the runner.

    fal deploy examples/fal/fal_app.py::scope

`python3 fal_app.py --print-command` prints the start command, and
`python3 fal_app.py --run` runs it here (no fal needed); the tests use both.
"""

from __future__ import annotations

import json
import os
import sys

# Where the Dockerfile puts things; each can be overridden for local runs.
ROUTER_BIN = os.environ.get("SCOPE_ROUTER_BIN", "/opt/scope-router/bin/scope-router")
ROUTES = os.environ.get("SCOPE_ROUTES", "/opt/scope-router/examples/fal/routes.yaml")
PORT = int(os.environ.get("SCOPE_ROUTER_PORT", "8080"))


def router_command(
    router_bin: str = ROUTER_BIN, routes: str = ROUTES, port: int = PORT
) -> list[str]:
    """The container's start command: the router, which starts Scope itself."""
    return [
        router_bin,
        "serve",
        "--routes",
        routes,
        "--listen",
        f"0.0.0.0:{port}",
        "--log-format",
        "json",
    ]


def run() -> int:
    """Runs the router in the foreground; fal's stop signal reaches it directly."""
    command = router_command()
    # exec: the router becomes this process, so SIGTERM from fal goes straight
    # to it and it can stop Scope's whole process group before exiting.
    os.execv(command[0], command)
    return 1  # not reached


try:
    import fal  # type: ignore[import-not-found]
    from fal.container import ContainerImage  # type: ignore[import-not-found]
except ImportError:  # Local use and tests: fal is only needed to deploy.
    fal = None

if fal is not None:
    _DIR = os.path.dirname(os.path.abspath(__file__))

    @fal.function(
        kind="container",
        image=ContainerImage.from_dockerfile(os.path.join(_DIR, "Dockerfile")),
        machine_type=os.environ.get("FAL_MACHINE_TYPE", "GPU-H100"),
        exposed_port=PORT,
        # One user per runner: their WebRTC sessions and uploads live here.
        max_concurrency=1,
        keep_alive=300,
    )
    def scope() -> None:
        # HF_TOKEN (TURN credentials) and PIPELINE (pre-warm), set as fal secrets,
        # arrive in the environment and pass through the router to Scope.
        # SCOPE_ROUTER_OPERATOR_TOKEN, also a fal secret, is the router's own: it
        # guards /admin/config, /metrics and the detailed /readyz (routes.yaml `operator`).
        run()


if __name__ == "__main__":
    if "--print-command" in sys.argv:
        print(json.dumps(router_command()))
        sys.exit(0)
    if "--run" in sys.argv:
        sys.exit(run())
    print(__doc__)
