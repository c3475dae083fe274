"""`tuneforge serve RUN [RUN ...]`: load the runs, start the engine, run uvicorn."""

import os
import socket
import threading
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.serve.app import Limits, create_app
from tuneforge.serve.engine import Engine
from tuneforge.serve.models import ModelPool
from tuneforge.serve.store import Store

API_KEY_ENV = "TUNEFORGE_API_KEY"


def build(run_dirs: list[Path], db: Path, api_key: str | None = None, precision: str = "auto",
          limits: Limits = Limits(), max_batch: int = 16):
    """(app, engine, store) ready to hand to any ASGI server; the engine thread is running."""
    pool = ModelPool(run_dirs, precision)
    store = Store(db)
    engine = Engine(pool, max_batch).start()
    return create_app(pool, engine, store, api_key, limits), engine, store


def serve(run_dirs: list[Path], host: str, port: int, db: Path | None, api_key: str | None, precision: str,
          limits: Limits, max_batch: int) -> None:
    import uvicorn

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    _check_port(host, port)
    db = db or run_dirs[0].parent / "requests.sqlite"
    app, engine, store = build(run_dirs, db, api_key, precision, limits, max_batch)
    names = ", ".join(app.state.pool.served)
    where = f"http://{host}:{port}"
    print(f"Serving {names} at {where}/v1 (OpenAI-compatible); playground: {where}/ ; request log: {db}"
          + ("; API key required" if api_key else ""), flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: {host} is reachable from other machines and no API key is set "
              f"(--api-key or {API_KEY_ENV}).", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        engine.stop()
        store.close()


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); another server may be using it. "
                            "Pass another --port.") from None


class Background:
    """A real uvicorn server on a free localhost port in a thread (tests and benchmarks)."""

    def __init__(self, app, host: str = "127.0.0.1"):
        import uvicorn

        with socket.socket() as s:
            s.bind((host, 0))
            self.port = s.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Background":
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            threading.Event().wait(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
