"""The function behind `prunex serve`: settings from the options, the model loaded after start-up."""

from __future__ import annotations

import logging


def serve_command(source: str | None, *, host: str, port: int, api_key: str | None, max_batch: int,
                  max_queue: int, device: str, threads: int | None, model_name: str | None) -> None:
    """Run the server until interrupted; /health says 503 while the model loads."""
    from prunex.runtime.session import choose_device
    from prunex.serve.app import ServeSettings, load_served_model, run

    choose_device(device)  # an unknown --device is refused before the server starts
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = ServeSettings(host=host, port=port, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                             device=device, threads=threads)
    run(lambda: load_served_model(source, device, threads, max_batch, model_name), settings)
