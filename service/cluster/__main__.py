"""`python -m service.cluster`: serve the configured models as Ray Serve replicas.

    python -m service.cluster [--replicas N | --autoscale MIN:MAX] [--cpus-per-replica F] [--gpus-per-replica F]
                              [--host H] [--port P] [--address RAY_ADDRESS]
    python -m service.cluster status [--address RAY_ADDRESS]

Without --address (nor RAY_ADDRESS) it starts a Ray instance on this machine, deploys, and serves until
SIGINT/SIGTERM, then stops it. With --address it deploys onto that running cluster and returns; the
cluster keeps serving (`serve shutdown`, or `python -m service.cluster --address ... --delete`, stops it).
Settings come from the BRIDGENET_* variables, as for `python -m service`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from service.logs import configure_logging

log = logging.getLogger("service.cluster")

LOCAL_OBJECT_STORE_MB = 512  # request bodies pass through it; Ray's default (30 % of memory) is far more


def _fraction(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service.cluster", description=__doc__.split("\n\n")[0])
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--replicas", type=int, default=1, help="fixed number of replicas (default: %(default)s)")
    count.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="scale between MIN and MAX replicas on ongoing requests per replica (target: BRIDGENET_MAX_INFLIGHT)",
    )
    parser.add_argument("--cpus-per-replica", type=_fraction, default=1.0, help="CPUs reserved (default: %(default)s)")
    parser.add_argument("--gpus-per-replica", type=_fraction, default=0.0, help="GPUs reserved (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface of the HTTP proxies (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port of the HTTP proxies (default: %(default)s)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to join (RAY_ADDRESS)")
    parser.add_argument("--name", default=None, help="Serve application name (default: bridgenet)")
    parser.add_argument("--route-prefix", default="/", help="URL prefix of the application (default: %(default)s)")
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all; not with --address)"
    )
    parser.add_argument("--delete", action="store_true", help="remove the application from the cluster and return")
    return parser.parse_args(argv)


def parse_status_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service.cluster status", description="print Serve's status as JSON"
    )
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster (RAY_ADDRESS)")
    return parser.parse_args(argv)


def status_report() -> dict[str, Any]:
    """Applications, their deployments, replica counts by state and messages (`serve status` without the
    dashboard, which a small Ray instance does not run)."""
    from ray import serve

    status = serve.status()
    return {
        name: {
            "status": _name(app.status),
            "message": app.message,
            "deployments": {
                dep_name: {
                    "status": _name(dep.status),
                    "message": dep.message,
                    "replica_states": {_name(k): v for k, v in dep.replica_states.items()},
                }
                for dep_name, dep in app.deployments.items()
            },
        }
        for name, app in status.applications.items()
    }


def _name(value: Any) -> str:
    """An enum member's value ("RUNNING"), for JSON."""
    return str(getattr(value, "value", value))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    configure_logging("INFO")
    import ray
    from ray import serve

    if argv[:1] == ["status"]:
        args = parse_status_args(argv[1:])
        if not args.address:
            log.error("status needs --address or RAY_ADDRESS")
            return 2
        ray.init(address=args.address, logging_level=logging.WARNING)
        print(json.dumps(status_report(), indent=2))
        return 0

    from service.cluster.app import (
        APP_NAME,
        PROXY_CALLBACK,
        PROXY_CALLBACK_ENV,
        ClusterConfigError,
        Scale,
        build,
        parse_autoscale,
    )
    from service.config import get_settings

    args = parse_args(argv)
    name = args.name or APP_NAME
    if args.delete:
        if not args.address:
            log.error("--delete needs --address or RAY_ADDRESS")
            return 2
        ray.init(address=args.address, logging_level=logging.WARNING)
        serve.delete(name)
        log.info("deleted application %s", name)
        return 0
    try:
        settings = get_settings()
        # Replicas do not start in this directory: a relative models path means this machine's checkout.
        settings = settings.model_copy(update={"models_dir": settings.models_dir.resolve()})
        scale = Scale(
            replicas=args.replicas,
            autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
            cpus_per_replica=args.cpus_per_replica,
            gpus_per_replica=args.gpus_per_replica,
        )
        application = build(settings, scale)
    except (ClusterConfigError, ValueError) as exc:  # SettingsError is a ValueError
        log.error("%s", exc)
        return 2
    configure_logging(settings.log_level)

    local = not args.address
    if local:
        # Inherited by the processes of the instance started here, the proxies among them.
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
        ray.init(
            num_cpus=args.num_cpus,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_MB * 1024 * 1024,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=args.address, logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        try:
            serve.run(application, name=name, route_prefix=args.route_prefix)
        except RuntimeError as exc:  # DEPLOY_FAILED: the replicas' start-up error is in the message
            log.error("deployment %s failed: %s", name, exc)
            return 1
        log.info(
            "serving",
            extra={
                "url": f"http://{args.host}:{args.port}{args.route_prefix}",
                "application": name,
                "scale": vars(scale),
            },
        )
        if not local:
            return 0
        _wait_for_signal()
        log.info("stopping")
        serve.shutdown()
        return 0
    finally:
        if local:
            ray.shutdown()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    sys.exit(main())
