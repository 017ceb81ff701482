"""The chaos suite of issue 13: real `pushsite` processes killed with SIGKILL at random
moments (deploys, prunes, `serve`), prunes racing deploys on the local store and on SeaweedFS,
two `serve`s and a CLI deploy sharing one home, a full disk on a small tmpfs. Every round
checks the live site over HTTP byte for byte, `pushsite verify`, and that no deployment stays
running or queued once the leases (2 s here) ran out.

`make chaos` (or `python -m chaos`) runs the full version and prints the figures;
tests/test_chaos.py runs a few iterations of each inside `make test`. Everything binds
127.0.0.1 and is stopped at the end.
"""
