"""A requests session whose every connection goes to an address vetted by :class:`AddressPolicy`.

The check happens inside the connection itself, on the addresses it actually connects to, so a
DNS answer that changes between a check and the connect (DNS rebinding) cannot slip through.
TLS still verifies the certificate against the host name.
"""

from __future__ import annotations

import socket

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from ieiw.pipelines.web.addresses import AddressPolicy


def _connect_vetted(conn: HTTPConnection, policy: AddressPolicy, scheme: str) -> socket.socket:
    """Open a socket to the first reachable vetted address of ``conn.host`` (an allowed origin is
    matched on the scheme, the host as the URL wrote it and the port)."""
    last: OSError | None = None
    for family, ip in policy.vetted_addresses(conn._dns_host, conn.port, scheme):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for level, option, value in conn.socket_options or ():
                sock.setsockopt(level, option, value)
            if conn.timeout is not None and conn.timeout is not _DEFAULT_TIMEOUT:
                sock.settimeout(conn.timeout)
            sock.connect((ip, conn.port))
            return sock
        except TimeoutError as error:
            sock.close()
            raise ConnectTimeoutError(conn, f"connection to {conn.host} timed out") from error
        except OSError as error:
            sock.close()
            last = error
    raise NewConnectionError(conn, f"failed to connect to {conn.host}: {last}")


def _vetted_classes(policy: AddressPolicy) -> dict[str, type]:
    class VettedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _connect_vetted(self, policy, "http")

    class VettedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _connect_vetted(self, policy, "https")

    class VettedHTTPPool(HTTPConnectionPool):
        ConnectionCls = VettedHTTPConnection

    class VettedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = VettedHTTPSConnection

    return {"http": VettedHTTPPool, "https": VettedHTTPSPool}


class VettedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connection pools connect only to vetted addresses."""

    def __init__(self, policy: AddressPolicy, pool_maxsize: int = 32) -> None:
        self._policy = policy
        super().__init__(pool_connections=64, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _vetted_classes(self._policy)


def make_session(policy: AddressPolicy, user_agent: str, pool_maxsize: int = 32) -> requests.Session:
    """A pooled session for the crawler: vetted connections, no proxies or .netrc from the environment."""
    session = requests.Session()
    session.trust_env = False  # an environment proxy would connect on our behalf, bypassing the check
    adapter = VettedAdapter(policy, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    return session
