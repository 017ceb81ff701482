"""Where bundles come from: the built-in git remote, git hosts' webhooks, archive fetches."""
