"""pushsite: git push a static site; atomic deploys, instant rollback, branch previews."""

__version__ = "0.1.0"
