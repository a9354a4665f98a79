"""ETSI GS QKD 014 REST server over a :class:`~qkdpost.delivery.Kme`.

Routes (ETSI GS QKD 014 V1.1.1, Sec. 5 and 6):

* ``GET /api/v1/keys/{slave_SAE_ID}/status``
* ``GET|POST /api/v1/keys/{slave_SAE_ID}/enc_keys`` (query ``number``, ``size``
  or JSON ``{"number", "size", "additional_slave_SAE_IDs"}``)
* ``GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys`` (query ``key_ID`` or JSON
  ``{"key_IDs": [{"key_ID": ...}]}``)

Replies are JSON; refusals carry ``{"message": ...}`` with status 400, 401 or
503. ETSI 014 identifies SAEs by mutually authenticated TLS: with
``tls_cert``/``tls_key`` the server speaks HTTPS, and with ``client_ca`` it
requires a client certificate from that CA whose subject common name must be
the SAE this KME serves (the master SAE for ``enc_keys``/``status``, the
slave SAE for ``dec_keys``). Without TLS (tests, a local socket behind a
trusted proxy) anyone who reaches the port can take keys: the CLI says so.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import ConfigError
from . import DeliveryError, Kme

__all__ = ["make_server"]

log = logging.getLogger(__name__)

_MAX_BODY = 1 << 20


def _peer_cn(handler: BaseHTTPRequestHandler) -> str | None:
    sock = handler.connection
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class _KmeServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a failed TLS handshake or a timed-out peer: one line, no traceback on stderr
        log.warning("KME connection from %s ended: %s", client_address[0], sys.exc_info()[1])


def _handler_for(kme: Kme, require_client_cert: bool, timeout_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "qkdpost-kme"
        protocol_version = "HTTP/1.1"
        timeout = timeout_s  # applied to the connection by setup(): a silent peer cannot hold a thread

        def setup(self) -> None:
            super().setup()
            if isinstance(self.connection, ssl.SSLSocket):
                # on this connection's thread, under the timeout (not in the accept loop, where one
                # silent peer would stop the KME from accepting anybody)
                self.connection.do_handshake()

        def log_message(self, fmt: str, *args: Any) -> None:  # no key material: only the request line
            log.info("%s %s", self.address_string(), fmt % args)

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            text = self.headers.get("Content-Length") or "0"
            try:
                n = int(text)
            except ValueError:
                raise DeliveryError(400, f"Content-Length {text[:32]!r} is not a byte count") from None
            if not 0 <= n <= _MAX_BODY:
                raise DeliveryError(400, f"request body of {n} bytes: must be 0 to {_MAX_BODY} bytes")
            if n == 0:
                return {}
            try:
                body = json.loads(self.rfile.read(n))
            except ValueError:
                raise DeliveryError(400, "request body is not JSON") from None
            if not isinstance(body, dict):
                raise DeliveryError(400, "request body must be a JSON object")
            return body

        def _route(self, method: str) -> None:
            try:
                url = urlparse(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                if len(parts) != 5 or parts[:3] != ["api", "v1", "keys"]:
                    raise DeliveryError(404, f"no such resource {url.path!r}; see ETSI GS QKD 014 Sec. 5")
                sae, op = parts[3], parts[4]
                query = parse_qs(url.query)
                body = self._body() if method == "POST" else {}
                if op == "enc_keys":
                    self._check_client(kme.master_sae_id)
                elif op == "dec_keys":
                    self._check_client(kme.slave_sae_id)
                elif op == "status":
                    self._check_client(kme.master_sae_id, kme.slave_sae_id)
                if op == "status" and method == "GET":
                    self._reply(200, kme.status(sae))
                elif op == "enc_keys":
                    number = body.get("number", _int(query, "number", 1))
                    size = body.get("size", _int(query, "size", None))
                    self._reply(200, kme.enc_keys(sae, number, size, body.get("additional_slave_SAE_IDs")))
                elif op == "dec_keys":
                    if method == "POST":
                        items = body.get("key_IDs")
                        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                            raise DeliveryError(400, 'key_IDs: expected [{"key_ID": "..."}, ...]')
                        ids = [i.get("key_ID") for i in items]
                    else:
                        ids = query.get("key_ID", [])
                    self._reply(200, kme.dec_keys(sae, ids))
                else:
                    raise DeliveryError(404, f"no such operation {op!r} for {method}")
            except DeliveryError as exc:
                self._reply(exc.status, {"message": str(exc)})
            except Exception:  # never a traceback (or key material) to the client
                log.exception("KME request failed")
                self._reply(503, {"message": "internal error of the KME"})

        def _check_client(self, *expected: str) -> None:
            if not require_client_cert:
                return
            cn = _peer_cn(self)
            if cn not in expected:
                raise DeliveryError(401, f"client certificate names {cn!r}, this operation is for SAE "
                                         f"{' or '.join(map(repr, expected))}")

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

    return Handler


def _int(query: dict[str, list[str]], name: str, default: int | None) -> int | None:
    if name not in query:
        return default
    try:
        return int(query[name][0])
    except ValueError:
        raise DeliveryError(400, f"{name}={query[name][0]!r}: must be an integer") from None


def make_server(kme: Kme, host: str = "127.0.0.1", port: int = 0, *, tls_cert: str | None = None,
                tls_key: str | None = None, client_ca: str | None = None,
                request_timeout_s: float = 30.0) -> ThreadingHTTPServer:
    """An ETSI 014 HTTP(S) server for ``kme`` (call ``serve_forever()``; ``server_address`` has the port).

    ``request_timeout_s`` bounds the TLS handshake and every wait for a
    client's bytes (an idle keep-alive connection is closed after it).
    """
    if client_ca and not tls_cert:
        raise ConfigError("client_ca needs tls_cert and tls_key: client certificates are checked over HTTPS only")
    if not request_timeout_s > 0:
        raise ConfigError(f"request_timeout_s={request_timeout_s!r}: must be > 0 seconds, e.g. 30")
    server = _KmeServer((host, port), _handler_for(kme, bool(client_ca), float(request_timeout_s)))
    if tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(tls_cert, tls_key)
            if client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(client_ca)
        except (OSError, ssl.SSLError) as exc:
            server.server_close()
            raise ConfigError(f"TLS files {tls_cert!r}/{tls_key!r}/{client_ca!r}: {exc}") from None
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Run ``server`` on a daemon thread (tests, embedding); stop with ``server.shutdown()``."""
    t = threading.Thread(target=server.serve_forever, name="qkdpost-kme", daemon=True)
    t.start()
    return t
