"""`python -m examples.portal [--host H] [--port P]`: run the portal (after examples/portal/run.py registered it)."""

from __future__ import annotations

import argparse
import logging
from urllib.parse import urlsplit

from werkzeug.serving import WSGIRequestHandler, run_simple

from examples.portal import PortalSettings, create_app


class PathOnlyRequestHandler(WSGIRequestHandler):
    """Request log lines without the query string: /callback's carries the authorization code."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("info", '"%s %s" %s', self.command, self.path.split("?", 1)[0], code)


def main() -> None:
    settings = PortalSettings.from_env()
    parts = urlsplit(settings.portal_url)
    parser = argparse.ArgumentParser(prog="python -m examples.portal", description=__doc__)
    parser.add_argument("--host", default=parts.hostname or "127.0.0.1")
    parser.add_argument("--port", type=int, default=parts.port or 8001)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s portal %(levelname)s %(message)s")
    # The development server of Werkzeug, threaded: enough for a sample; a service runs a production WSGI server.
    run_simple(args.host, args.port, create_app(settings), threaded=True, request_handler=PathOnlyRequestHandler)


if __name__ == "__main__":
    main()
