"""`prunex serve --replicas N`: the same FastAPI app as a Ray Serve deployment, for more than one process or machine.

Each replica is a Ray actor that loads its own runtime (its own K/V cache and scheduler) before it takes
traffic, then serves `create_app`'s routes unchanged (`@serve.ingress`); Ray Serve's proxy spreads requests over
the replicas and owns the queueing in front of them (`max_ongoing_requests` per replica, `max_queued_requests`
beyond them: past it the proxy answers 503), restarts a replica that dies, and scales between
`min_replicas` and `max_replicas` when autoscaling is on. Ray is an optional extra (`pip install "prunex[ray]"`);
the single-process server never imports it.

On one machine (`prunex serve ... --replicas 2`) this module starts a local Ray and blocks. On a cluster, deploy
the application builder with Ray's own tools:

    serve run prunex.serve.replicas:build source=/models/exported/smollm2-dcp replicas=4 threads=8
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from prunex.errors import PrunexError
from prunex.prune.policy_spec import PolicySpec
from prunex.serve.app import ServeSettings

log = logging.getLogger(__name__)

DEPLOYMENT = "prunex"


@dataclass
class ReplicaSettings:
    """How the replicas run (Ray Serve's deployment options)."""

    replicas: int = 2  # replicas to start (autoscaling: the least)
    max_replicas: int | None = None  # autoscaling up to this many (None: a fixed number)
    target_ongoing_requests: float = 8.0  # autoscaling: requests per replica it aims at
    max_ongoing_requests: int | None = None  # per replica (None: the server's max_batch + max_queue)
    max_queued_requests: int = -1  # waiting in the proxy for a replica past that (-1: no limit); past it: 503
    cpus_per_replica: float | None = None  # Ray's scheduling resource (None: the server's --threads, else 1)

    def deployment_options(self, server: ServeSettings) -> dict[str, Any]:
        """Keyword arguments of `serve.deployment(...)`."""
        if self.replicas < 1:
            raise PrunexError("--replicas must be at least 1")
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests or server.max_batch + server.max_queue,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": {"num_cpus": self.cpus_per_replica or server.threads or 1},
        }
        if self.max_replicas is not None and self.max_replicas > self.replicas:
            options["autoscaling_config"] = {"min_replicas": self.replicas, "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        else:
            options["num_replicas"] = self.replicas
        return options


@dataclass
class LoadArgs:
    """What each replica passes to `load_served_model`."""

    source: str | None
    device: str = "auto"
    threads: int | None = None
    max_batch: int = 16
    name: str | None = None
    policy: PolicySpec | None = None  # a run-time keep policy for every request
    server: ServeSettings = field(default_factory=ServeSettings)


class PrunexReplica:
    """One replica: the model loaded in the constructor (so Ray routes to it only once it can answer), then the
    app of `prunex serve` over it."""

    def __init__(self, load: LoadArgs) -> None:
        from prunex.serve.model import load_served_model

        self.settings = load.server
        self.model = load_served_model(load.source, load.device, load.threads, load.max_batch, load.name,
                                       load.policy)

    def __serve_build_asgi_app__(self):
        from prunex.serve.app import create_app

        self.served_app = create_app(lambda: self.model, self.settings)  # (`app` is Ray's)
        return self.served_app

    def check_health(self) -> None:
        """Ray Serve's periodic check: a replica whose scheduler thread stopped is replaced."""
        scheduler = self.served_app.state.prunex.scheduler
        if scheduler is not None and not scheduler.alive:
            raise RuntimeError("the scheduler thread stopped")


def application(load: LoadArgs, replicas: ReplicaSettings):
    """The Ray Serve application: `PrunexReplica` as an ingress deployment with `replicas`' options, bound."""
    from ray import serve

    ingress = serve.ingress()(PrunexReplica)
    return serve.deployment(name=DEPLOYMENT, **replicas.deployment_options(load.server))(ingress).bind(load)


def build(args: dict[str, str]):
    """Application builder for `serve run prunex.serve.replicas:build source=DIR replicas=N ...`; keys: source,
    device, name, threads, max_batch, max_queue, api_key, replicas, max_replicas, max_ongoing_requests,
    max_queued_requests."""
    known = {"source", "device", "name", "threads", "max_batch", "max_queue", "api_key", "replicas", "max_replicas",
             "max_ongoing_requests", "max_queued_requests"}
    if set(args) - known:
        raise PrunexError(f"unknown arguments {sorted(set(args) - known)}; known: {', '.join(sorted(known))}")
    number = {k: int(v) for k, v in args.items() if k not in ("source", "device", "name", "api_key")}
    server = ServeSettings(max_batch=number.get("max_batch", 16), max_queue=number.get("max_queue", 64),
                           threads=number.get("threads"), api_key=args.get("api_key"))
    replicas = ReplicaSettings(replicas=number.get("replicas", 1), max_replicas=number.get("max_replicas"),
                               max_ongoing_requests=number.get("max_ongoing_requests"),
                               max_queued_requests=number.get("max_queued_requests", -1))
    load = LoadArgs(args.get("source"), args.get("device", "auto"), server.threads, server.max_batch,
                     args.get("name"), None, server)
    return application(load, replicas)


def run_local(load: LoadArgs, replicas: ReplicaSettings) -> None:
    """Start Ray on this machine, deploy the replicas on `load.server`'s host and port, serve until
    interrupted."""
    # a cluster of this machine alone, on loopback: Ray's processes never use the machine's other addresses
    # (Ray reads this when it is imported, and its processes inherit it)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        from ray import serve
    except ImportError:
        raise PrunexError('--replicas runs on Ray Serve: pip install "prunex[ray]" (or "ray[serve]")') from None

    server = load.server
    cpus = os.cpu_count() or 1
    needed = replicas.replicas * (replicas.cpus_per_replica or server.threads or 1)
    if needed > cpus:
        log.warning("%d replicas x %s threads oversubscribe this machine's %d cores", replicas.replicas,
                    server.threads or 1, cpus)
    ray.init(num_cpus=max(cpus, needed), include_dashboard=False, logging_level=logging.WARNING)
    serve.start(http_options={"host": server.host, "port": server.port})
    serve.run(application(load, replicas), name=DEPLOYMENT, route_prefix="/")
    log.info("serving %d replicas on http://%s:%d (%s)", replicas.replicas, server.host, server.port,
             asdict(replicas))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM shuts Ray down too, as Ctrl-C does
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
