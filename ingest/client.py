"""The client address a request is limited by: the socket peer, or what trusted proxies say."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's IPv4 peer
    return address


@lru_cache(maxsize=4096)
def _client_key(text: str, ipv6_prefix: int) -> str:
    address = _parse(text)
    if address is None:
        return text
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


class ClientAddresses:
    """Who sent a request, as far as this API can tell.

    The socket peer, unless it is one of the ``trusted`` proxies: then ``X-Forwarded-For``
    is read from the right (each proxy appends the address it received from), skipping
    trusted proxies, and the first other address is the client. An entry that is no
    address ends the walk at the proxy that wrote it. Nobody is trusted by default: any
    client can send the header, so honouring it from anyone would let each request name a
    new client address and escape the per-address limit.
    """

    def __init__(self, trusted: Iterable[Network] = (), ipv6_prefix: int = 64) -> None:
        self._trusted = tuple(trusted)
        self._prefix = ipv6_prefix

    def of(self, peer: str | None, forwarded_for: list[str]) -> str:
        """The key to limit the client by: its address, or an IPv6 client's network."""
        client = peer or "unknown"
        if self._trusted and forwarded_for and self._is_trusted(_parse(client)):
            client = self._walk(client, forwarded_for)
        return _client_key(client, self._prefix)

    def _is_trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in net for net in self._trusted)

    def _walk(self, peer: str, forwarded_for: list[str]) -> str:
        hops = [hop for header in forwarded_for for hop in header.split(",")]
        client = peer
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                return client
            client = str(address)
            if not self._is_trusted(address):
                return client
        return client
