"""Run one worker process in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import faust

from streams.app import create_app
from unifier import logs
from unifier.settings import Settings


def run_worker(settings: Settings) -> None:
    (settings.state_dir / "worker-data").mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    app.finalize()
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.lower(),
        quiet=True,
        workdir=str(settings.state_dir),
        redirect_stdouts=False,
        logging_config=logs.config(settings.log_level, settings.log_format),
    )
    worker.execute_from_commandline()
