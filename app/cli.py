"""`mmodal serve`: the web app's command, registered with the mmodal CLI through the
``mmodal.commands`` entry point, so that the CLI needs no import of the app (or of Gradio) to start."""

from __future__ import annotations

import argparse
import logging
import os

from mmodal.app.settings import AUTH_ENV, DEFAULT_HOST, DEFAULT_PORT, MAX_UPLOAD

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the web app: search, ask and index from a browser")
    serve.add_argument("--index", required=True, help="index folder (created empty when missing)")
    serve.add_argument("--model", help="model folder or embedded name (default: the index's model, else shapes)")
    serve.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)"
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help=f"require a login; several as u1:p1,u2:p2 (or set {AUTH_ENV}, which keeps it out of the process list)",
    )
    serve.add_argument("--max-upload", default=MAX_UPLOAD, help=f"largest upload accepted (default {MAX_UPLOAD})")
    serve.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes that run the model, one core each (default: one per core; 0: in the web process)",
    )
    serve.add_argument(
        "--no-indexing",
        dest="indexing",
        action="store_false",
        help="do not let the web page add folders on this machine (search and ask only)",
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import torch

    from mmodal.app.server import Collection, ServeOptions, launch, parse_auth

    # One thread per search, and as many searches at once as there are cores (ServeOptions.workers): the model's
    # operations are small, so one search gains little from a second thread, and two searches gain twice.
    torch.set_num_threads(1)

    credentials = args.auth or os.environ.get(AUTH_ENV)
    options = ServeOptions(
        host=args.host,
        port=args.port,
        auth=parse_auth(credentials) if credentials else (),
        max_upload=args.max_upload,
        allow_indexing=args.indexing,
        workers=max(0, args.workers),
    )
    if not options.auth and args.host not in LOOPBACK:
        log.warning(
            "serving on %s without --auth: anyone who can reach this machine can search and add folders", args.host
        )
    launch(Collection.open(args.index, args.model), options)
    return 0
