"""`reportgen serve SITE [--base /REPO/]`: preview a site as GitHub Pages serves it, under a sub-path.

Only paths under `base` are served (anything else is 404, as on Pages), so a link that escapes the
site or starts with '/' shows up as broken here before it does in production.
"""

import functools
import http.server
import posixpath
from pathlib import Path
from urllib.parse import unquote, urlsplit


class SubPathHandler(http.server.SimpleHTTPRequestHandler):
    base = "/"

    def translate_path(self, path: str) -> str:
        path = unquote(urlsplit(path).path)
        if not path.startswith(self.base):
            return str(Path(self.directory) / ".reportgen-not-found")
        rel = posixpath.normpath(path[len(self.base):] or ".")
        if rel.startswith(".."):
            return str(Path(self.directory) / ".reportgen-not-found")
        return str(Path(self.directory) / rel)

    def do_GET(self):
        if self.path.split("?")[0] == self.base.rstrip("/"):
            self.send_response(301)
            self.send_header("Location", self.base)
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format, *args):  # quiet: one line per request is noise in a preview
        pass


def make_server(site: Path, base: str = "/", host: str = "127.0.0.1", port: int = 8000) -> http.server.HTTPServer:
    base = "/" + base.strip("/") + "/" if base.strip("/") else "/"
    handler = functools.partial(type("Handler", (SubPathHandler,), {"base": base}), directory=str(site))
    return http.server.ThreadingHTTPServer((host, port), handler)
