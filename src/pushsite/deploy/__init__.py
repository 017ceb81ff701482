"""Deploy drivers (tarball, folder, git commit) feeding one manifest builder."""
