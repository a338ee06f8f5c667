"""Deploys Scope 0.2.4+ (the Livepeer runner) on fal behind scope-router, in place of the Python wrapper.

fal starts this container on a GPU runner and sends every request for the app to
`exposed_port`, where scope-router listens. The router starts and supervises
`livepeer-runner` (see routes.yaml beside this file), admits one Livepeer
orchestrator at a time on /ws, tunnels its frames to the runner's /ws, cleans the
runner between sessions, and stops the runner cleanly when fal stops the machine.

    fal deploy examples/livepeer/fal_app.py::scope_livepeer

`python3 fal_app.py --print-command` prints the start command, and
`python3 fal_app.py --run` runs it here (no fal needed).
"""

from __future__ import annotations

import json
import os
import sys

ROUTER_BIN = os.environ.get("SCOPE_ROUTER_BIN", "/opt/scope-router/bin/scope-router")
ROUTES = os.environ.get("SCOPE_ROUTES", "/opt/scope-router/examples/livepeer/routes.yaml")
PORT = int(os.environ.get("SCOPE_ROUTER_PORT", "8080"))


def router_command(
    router_bin: str = ROUTER_BIN, routes: str = ROUTES, port: int = PORT
) -> list[str]:
    """The container's start command: the router, which starts the runner itself."""
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
    """Runs the router in the foreground (exec: fal's SIGTERM reaches it directly)."""
    command = router_command()
    os.execv(command[0], command)
    return 1  # not reached


try:
    import fal  # type: ignore[import-not-found]
    from fal.container import ContainerImage  # type: ignore[import-not-found]
except ImportError:  # Local use: fal is only needed to deploy.
    fal = None

if fal is not None:
    _DIR = os.path.dirname(os.path.abspath(__file__))

    @fal.function(
        kind="container",
        image=ContainerImage.from_dockerfile(os.path.join(_DIR, "Dockerfile")),
        machine_type=os.environ.get("FAL_MACHINE_TYPE", "GPU-H100"),
        exposed_port=PORT,
        # One orchestrator session per runner.
        max_concurrency=1,
        keep_alive=300,
    )
    def scope_livepeer() -> None:
        # HF_TOKEN, DAYDREAM_*, LIVEPEER_* and KAFKA_* secrets arrive in the environment;
        # the router passes only the variables routes.yaml's env_allowlist names to the runner.
        run()


if __name__ == "__main__":
    if "--print-command" in sys.argv:
        print(json.dumps(router_command()))
        sys.exit(0)
    if "--run" in sys.argv:
        sys.exit(run())
    print(__doc__)
