"""`tuneforge serve RUN [RUN ...]`: load the runs, start the engine, run uvicorn."""

import os
import signal
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
          limits: Limits = Limits(), max_batch: int = 16, start: bool = True, max_queue: int = 256):
    """(app, engine, store) ready to hand to any ASGI server; the engine thread is running unless `start`
    is False (then the caller runs it: Engine.run)."""
    pool = ModelPool(run_dirs, precision)
    store = Store(db)
    engine = Engine(pool, max_batch, max_queue)
    if start:
        engine.start()
    return create_app(pool, engine, store, api_key, limits), engine, store


def serve(run_dirs: list[Path], host: str, port: int, db: Path | None, api_key: str | None, precision: str,
          limits: Limits, max_batch: int, max_queue: int) -> None:
    import uvicorn

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    _check_port(host, port)
    db = db or run_dirs[0].parent / "requests.sqlite"
    app, engine, store = build(run_dirs, db, api_key, precision, limits, max_batch, start=False, max_queue=max_queue)
    names = ", ".join([*app.state.pool.served, *app.state.pool.heads])
    where = f"http://{host}:{port}"
    print(f"Serving {names} at {where}/v1 (OpenAI-compatible); playground: {where}/ ; request log: {db}"
          + ("; API key required" if api_key else ""), flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: {host} is reachable from other machines and no API key is set "
              f"(--api-key or {API_KEY_ENV}).", flush=True)
    # uvicorn in a thread and the engine in the main one (Engine.run says why). Ctrl-C or SIGTERM stops
    # uvicorn, which lets the requests in flight finish, and its end stops the engine.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

    def http() -> None:
        try:
            server.run()
        finally:
            engine.stop()

    def shut_down(*_) -> None:  # as uvicorn does in the main thread: a second signal stops at once
        server.force_exit = server.should_exit
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, shut_down)
    thread = threading.Thread(target=http, name="tuneforge-http")
    thread.start()
    try:
        engine.run()
    finally:
        thread.join()
        store.close()
    if not server.started:
        raise UserError(f"the server could not start on {host}:{port} (the error is above).")


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # as uvicorn binds: a port a stopped server just left (TIME_WAIT) is free, one listening is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
