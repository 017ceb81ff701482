"""The service is the one gate: entry points (web/, cli.py, aws/ and the other thin front
doors) never write the state themselves. Each write goes through a Service verb, so a rule
about sites or deployments lives in one place. Reads through `service.state` may stay.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from pushsite.state import StateStore

SRC = Path(__file__).resolve().parents[1] / "src" / "pushsite"
ENTRY_POINTS = [*sorted((SRC / "web").rglob("*.py")), *sorted((SRC / "aws").rglob("*.py")),
                *(SRC / name for name in ("cli.py", "remote.py", "devrun.py", "githook.py"))]

# every StateStore method, sorted into the ones that change the state and the ones that do not
WRITES = {"put_site", "delete_site", "claim_domain", "approve_domain", "release_domain",
          "create_deployment",
          "update_deployment", "claim_lease", "move_alias", "delete_alias", "append_logs",
          "put_token", "delete_token", "remember", "forget", "put_endpoint", "update_endpoint",
          "delete_endpoint", "append_delivery", "prune_deliveries", "put_sweep", "delete_sweep",
          "record_progress"}
READS = {"list_endpoints", "list_deliveries",
         "get_site", "list_sites", "site_heads", "domain_site", "get_domain", "list_domains",
         "get_deployment", "list_deployments",
         "get_alias", "list_aliases", "get_logs", "search_logs", "find_token", "list_tokens",
         "recalls", "find_deployments", "list_sweeps", "close"}


def state_writes(source: str) -> list[tuple[int, str]]:
    """(line, method) of each state write method reached as `<anything>.state.<method>` or
    `state.<method>`, called or passed on as a bound method."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Attribute) and node.attr in WRITES):
            continue
        receiver = node.value
        through_state = (isinstance(receiver, ast.Attribute) and receiver.attr == "state") or (
            isinstance(receiver, ast.Name) and receiver.id == "state")
        if through_state:
            found.append((node.lineno, node.attr))
    return sorted(found)


def test_every_state_method_is_sorted_into_reads_or_writes() -> None:
    """A method added to the protocol must be classified here, or this test fails."""
    methods = {name for name, _ in inspect.getmembers(StateStore, inspect.isfunction)
               if not name.startswith("_")}
    assert methods == WRITES | READS, (
        f"unclassified: {sorted(methods - WRITES - READS)}; "
        f"gone: {sorted((WRITES | READS) - methods)}")


def test_the_scan_finds_writes_however_they_are_reached() -> None:
    source = ("service.state.put_site(site)\n"
              "self.service.state.update_deployment(d)\n"
              "hook(remember=service.state.remember)\n"
              "state.delete_alias('a', 'b')\n"
              "service.state.get_site('a')\n"  # a read: allowed
              "service.put_site(site)\n")  # not through the state: a service verb
    assert state_writes(source) == [(1, "put_site"), (2, "update_deployment"),
                                    (3, "remember"), (4, "delete_alias")]


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=lambda p: str(p.relative_to(SRC)))
def test_entry_points_write_the_state_only_through_service_verbs(path: Path) -> None:
    writes = state_writes(path.read_text())
    assert not writes, (
        f"{path.relative_to(SRC)} writes the state directly at "
        + ", ".join(f"line {line} ({method})" for line, method in writes)
        + ": add or use a Service verb (service/verbs.py) instead")
