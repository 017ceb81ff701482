"""The Caddyfile `pushsite caddyfile` prints: Caddy in front of `pushsite serve`, with a
certificate for every name pushsite serves, obtained on a visitor's first request.

Caddy asks pushsite's `/tls/allowed` (web/tls.py) before each new certificate, and again
before it renews one, so a name no site serves never gets one, and a name removed from its
site is not renewed (its certificate runs out; tests/test_caddy_renewal.py). The control
plane's own host (the dashboard, the API, the git remote, the webhooks) is an ordinary Caddy
site with its certificate obtained at start.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CaddySetup:
    base_domain: str
    email: str = ""
    upstream: str = "127.0.0.1:8000"  # where `pushsite serve` listens
    dashboard_host: str = ""  # default: the base domain itself
    http_port: int = 80
    https_port: int = 443
    acme_ca: str = ""  # default: Caddy's (Let's Encrypt, ZeroSSL); tests use Pebble's
    acme_ca_root: str = ""  # a PEM file Caddy trusts for acme_ca's HTTPS (Pebble's)
    admin: str = ""  # Caddy's admin endpoint (default localhost:2019)
    storage: str = ""  # where Caddy keeps certificates (default its data folder)


def render(setup: CaddySetup) -> str:
    base = setup.base_domain
    dashboard = setup.dashboard_host or base
    upstream = setup.upstream
    port_part = "" if setup.https_port == 443 else f":{setup.https_port}"
    options = [f"\temail {setup.email}"] if setup.email else []
    if setup.admin:
        options.append(f"\tadmin {setup.admin}")
    if setup.http_port != 80:
        options.append(f"\thttp_port {setup.http_port}")
    if setup.https_port != 443:
        options.append(f"\thttps_port {setup.https_port}")
    if setup.acme_ca:
        options.append(f"\tacme_ca {setup.acme_ca}")
    if setup.acme_ca_root:
        options.append(f"\tacme_ca_root {setup.acme_ca_root}")
    if setup.storage:
        options.append(f"\tstorage file_system {setup.storage}")
    options += ["\ton_demand_tls {", f"\t\task http://{upstream}/tls/allowed", "\t}"]
    global_block = "\n".join(options)
    return f"""\
# Caddy in front of pushsite (made by `pushsite caddyfile --base-domain {base}`).
#
# Caddy gets a certificate for each name the first time a visitor asks for it (on-demand
# TLS), after asking pushsite whether it serves that name: GET /tls/allowed?domain=NAME
# answers 200 for <site>.{base}, for each site's approved custom domains, and (with
# `pushsite serve --tls-previews`) for branch previews and deployment permalinks.
#
# DNS: {base} and *.{base} point at this machine; each custom domain too.
# Run pushsite beside it:
#   pushsite serve --host 127.0.0.1 --port {upstream.rpartition(':')[2]} --base-domain {base} \\
#     --public-url https://{base}{port_part} --forwarded-allow-ips 127.0.0.1
{{
{global_block}
}}

# The control plane: dashboard, API, git remote (git push https://{dashboard}/<site>.git)
# and webhooks. Its certificate is obtained when Caddy starts.
{dashboard}{port_part} {{
\treverse_proxy {upstream}
}}

# Every site: <site>.{base}, custom domains, and previews when allowed. A certificate each,
# on demand. Caddy keeps the Host header, and sets X-Forwarded-Proto/-For/-Host.
https:// {{
\ttls {{
\t\ton_demand
\t}}
\treverse_proxy {upstream}
}}

# Plain HTTP: a redirect to HTTPS keeping the method (308; ACME HTTP-01 challenges first).
http:// {{
\tredir https://{{host}}{port_part}{{uri}} 308
}}

# One wildcard certificate for *.{base} covers every site, preview and permalink (they are
# all one label under {base}) without a certificate per name. A wildcard needs the ACME
# DNS-01 challenge: build Caddy with your DNS provider's module, e.g.
#   xcaddy build --with github.com/caddy-dns/cloudflare
# then add this block (site blocks with a name win over `https://`):
#
# *.{base}{port_part} {{
# \ttls {{
# \t\tdns cloudflare {{env.CLOUDFLARE_API_TOKEN}}
# \t}}
# \treverse_proxy {upstream}
# }}
"""
