"""Custom domains: which names a site may claim, and how a claim is proven.

A site's own files (pushsite.toml) speak for that site only, so a host they claim is held
for it as `pending` and never served until an admin approves it or its owner proves control
of the name in DNS: a TXT record `_pushsite-challenge.<host>` holding the site's domain
token. Names the edge or the control plane answer on by themselves (IP addresses,
`localhost`, the base domain and what is under it, the public URL's host) are never claimable
(edge/hosts.py `reserved_reason`).
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from urllib.parse import urlsplit

from pushsite import names
from pushsite.config import Config
from pushsite.edge.hosts import reserved_reason
from pushsite.errors import BackendUnavailable, ConfigError, DomainConflict
from pushsite.model import Site
from pushsite.state import StateStore

CHALLENGE_LABEL = "_pushsite-challenge"
_DNS_TIMEOUT = 5.0


def control_hosts(config: Config) -> tuple[str, ...]:
    """The names the control plane is reached at, as far as the settings say."""
    host = urlsplit(config.public_url).hostname
    return (host,) if host else ()


def claimable(host: str, config: Config) -> str:
    """`host` normalised, or DomainConflict naming why no site may hold it."""
    raw = host.strip().lower().rstrip(".")
    reason = reserved_reason(raw, config.base_domain, control_hosts(config))
    if reason:
        raise DomainConflict(f"the domain {raw} cannot be claimed: {reason}")
    return names.check_host(raw)


def challenge_name(host: str) -> str:
    return f"{CHALLENGE_LABEL}.{host}"


def domain_token(state: StateStore, site: Site) -> str:
    """The site's challenge value, made and stored on first use (the record is updated)."""
    if not site.settings.domain_token:
        site.settings = replace(site.settings, domain_token=secrets.token_hex(16))
        state.put_site(site)
    return site.settings.domain_token


def how_to_approve(site: str, host: str, token: str) -> str:
    """One sentence: the two ways a pending claim goes live."""
    return (f"an admin approves it with `pushsite domains approve {site} {host}`, or its owner "
            f"adds a DNS TXT record {challenge_name(host)} = \"{token}\" and runs "
            f"`pushsite domains verify {site} {host}`")


def txt_records(name: str, nameserver: str = "") -> list[str]:
    """The strings of `name`'s TXT records (each record's strings joined), [] when none.

    `nameserver` is host or host:port; "" asks the system's resolvers.
    """
    # dnspython loads here, not with the service: the Lambda package does not carry it
    import dns.exception
    import dns.resolver

    try:
        resolver = dns.resolver.Resolver(configure=not nameserver)  # reads /etc/resolv.conf
        if nameserver:
            address, port = _server(nameserver)
            resolver.nameservers = [address]
            resolver.port = port
        resolver.lifetime = _DNS_TIMEOUT
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise BackendUnavailable(f"DNS did not answer for {name} ({exc}); try again") from exc
    except ValueError as exc:  # a `dns` setting that is not an IP address (and port)
        raise ConfigError(f"invalid DNS server {nameserver!r} (setting dns): {exc}; write "
                          "an IP address, or IP:port") from exc
    return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


def _server(nameserver: str) -> tuple[str, int]:
    """(address, port) of "host", "host:port", "[v6]:port" or a bare IPv6 address."""
    if nameserver.startswith("["):
        address, _, rest = nameserver[1:].partition("]")
        port = rest.removeprefix(":")
    elif nameserver.count(":") == 1:
        address, _, port = nameserver.partition(":")
    else:
        address, port = nameserver, ""
    return address, int(port or 53)
