"""Run one worker process in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import faust

from config import logs
from config.settings import Settings
from streams.app import create_app


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
