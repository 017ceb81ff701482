"""The web layer: the control plane (dashboard, JSON API, git remote, webhooks) and the
ASGI app that dispatches between it and the edge by Host. Nothing below imports from here."""
