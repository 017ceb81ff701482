"""Helpers the test modules share: sites and git repositories, servers, in-process services, the
API client, AWS servers and staging. Test modules import from here, never from each other, and
conftest.py files hold only fixtures.

Importable as `support` because pytest puts tests/ on sys.path (tests/conftest.py has no
package around it), under `pytest` and `python -m pytest` alike.
"""
