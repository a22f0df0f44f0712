from ipaddress import ip_network

from ingest.client import ClientAddresses

PROXIES = [ip_network("10.0.0.0/8"), ip_network("192.0.2.1/32")]


def test_the_client_is_the_peer_when_no_proxy_is_trusted() -> None:
    clients = ClientAddresses()
    assert clients.of("203.0.113.7", ["198.51.100.1"]) == "203.0.113.7"
    assert clients.of(None, []) == "unknown"


def test_a_peer_that_is_not_a_trusted_proxy_cannot_name_another_client() -> None:
    clients = ClientAddresses(PROXIES)
    assert clients.of("203.0.113.7", ["198.51.100.1"]) == "203.0.113.7"


def test_behind_trusted_proxies_the_client_is_the_last_untrusted_hop() -> None:
    clients = ClientAddresses(PROXIES)
    # Each proxy appends who it received from: a client may put anything on the left.
    assert clients.of("192.0.2.1", ["6.6.6.6, 198.51.100.9, 10.1.2.3"]) == "198.51.100.9"
    assert clients.of("10.0.0.5", ["198.51.100.9"]) == "198.51.100.9"


def test_several_headers_are_one_list_in_order() -> None:
    clients = ClientAddresses(PROXIES)
    assert clients.of("10.0.0.5", ["6.6.6.6", "198.51.100.9, 10.1.2.3"]) == "198.51.100.9"


def test_a_chain_of_only_trusted_proxies_gives_its_first_hop() -> None:
    clients = ClientAddresses(PROXIES)
    assert clients.of("10.0.0.5", ["10.9.9.9, 10.1.2.3"]) == "10.9.9.9"


def test_an_entry_that_is_no_address_ends_the_walk_at_the_proxy_that_wrote_it() -> None:
    clients = ClientAddresses(PROXIES)
    assert clients.of("10.0.0.5", ["198.51.100.9, unknown"]) == "10.0.0.5"
    assert clients.of("10.0.0.5", ["garbage, 10.1.2.3"]) == "10.1.2.3"


def test_an_ipv6_client_is_its_network() -> None:
    clients = ClientAddresses(ipv6_prefix=64)
    assert clients.of("2001:db8:1:2:aaaa::1", []) == "2001:db8:1:2::/64"
    assert clients.of("2001:db8:1:2:bbbb::9", []) == "2001:db8:1:2::/64"
    assert clients.of("2001:db8:1:3::1", []) == "2001:db8:1:3::/64"


def test_an_ipv4_peer_of_a_dual_stack_socket_is_its_ipv4_address() -> None:
    # Not the /64 that holds every IPv4-mapped address.
    assert ClientAddresses().of("::ffff:203.0.113.7", []) == "203.0.113.7"
    assert ClientAddresses().of("::ffff:203.0.113.8", []) == "203.0.113.8"
