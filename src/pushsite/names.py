"""Site names, branch labels and hosts: what may appear in `<label>--<site>.<base>`."""

from __future__ import annotations

from pushsite.errors import ConfigError

# `re` is imported where a regex is used, not here: the deploy client checks a site name at
# each start (remote.py), and `re` (with enum) is ~4 ms of CPU it otherwise never imports
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_NOT_IN_REF = frozenset("".join(map(chr, range(0x21))) + "\x7f~^:?*[\\")


def _is_label(text: str) -> bool:
    """A DNS label: 1-63 of [a-z0-9-], no hyphen at either end."""
    return (0 < len(text) <= 63 and _LABEL_CHARS.issuperset(text)
            and not text.startswith("-") and not text.endswith("-"))


def check_site_name(name: str) -> str:
    """Return the name if it is a valid site name, else raise ConfigError saying why.

    A site name is a DNS label (`[a-z0-9-]`, 1-63 characters, no hyphen at either end) that
    does not contain "--", because "--" separates a preview or deployment label from the site.
    """
    if not _is_label(name) or "--" in name:
        raise ConfigError(
            f"invalid site name {name!r}: use 1-63 lowercase letters, digits and single hyphens, "
            "not starting or ending with a hyphen (for example 'blog' or 'my-docs')"
        )
    return name


def check_branch_name(branch: str) -> str:
    """Return the branch if git would accept it as a branch name, else raise ConfigError."""
    if (
        not branch
        or len(branch) > 255
        or not _NOT_IN_REF.isdisjoint(branch)
        or branch.startswith(("/", "-"))
        or branch.endswith(("/", ".", ".lock"))
        or ".." in branch
        or "//" in branch
        or "@{" in branch
    ):
        raise ConfigError(f"invalid branch name {branch!r}: use a name git accepts, e.g. 'main'")
    return branch


def branch_label(branch: str, max_length: int = 40) -> str:
    """Map a branch name to the DNS label used in its preview host.

    Lowercase it; every run of characters outside [a-z0-9] becomes one hyphen; hyphens at the
    ends are dropped; the result is cut to `max_length` (default 40, so that
    `<label>--<site>` still fits in 63 characters for most site names). `feature/Login_Form`
    becomes `feature-login-form`. Two branches of one site that map to the same label are a
    deploy-time error (see service.py).
    """
    import re

    label = re.sub(r"[^a-z0-9]+", "-", branch.lower()).strip("-")
    label = label[:max_length].rstrip("-")
    return label or "branch"


def check_host(host: str) -> str:
    """Return a lowercased host name if it is a valid DNS name, else raise ConfigError."""
    host = host.strip().lower().rstrip(".")
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(map(_is_label, labels)):
        raise ConfigError(f"invalid domain {host!r}: expected a host name such as www.example.com")
    return host
