"""The one gate to the product's verbs: entry points parse, call one verb, present."""

from pushsite.service.verbs import Service, deadline_margin

__all__ = ["Service", "deadline_margin"]
