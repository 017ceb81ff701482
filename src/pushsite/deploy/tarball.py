"""The tar.gz driver: a bundle read as a stream feeds the deployer (builder.py) file by file.

One of three drivers beside folder.py (a folder read in place) and gitcommit.py (a pushed
commit read from the repository); each hands the same ManifestBuilder its files.
"""

from __future__ import annotations

from typing import BinaryIO

from pushsite.deploy.builder import SMALL_FILE, BundleOutcome, ManifestBuilder
from pushsite.deploy.bundle import BundleReader, MemberKind
from pushsite.deploy.paths import is_published
from pushsite.limits import Limits


def deploy_bundle(stream: BinaryIO, builder: ManifestBuilder, limits: Limits,
                  deployment_id: str, site: str, created: float) -> BundleOutcome:
    """Read a tar.gz bundle as a stream and build its manifest (stages 1-4)."""
    reader = BundleReader(stream, limits)
    skipped_dotfiles = 0
    try:
        for member in reader.members():
            if member.kind == MemberKind.DIR:
                builder.add_dir(member.path)
            elif member.kind == MemberKind.FILE:
                if not _maybe_published(member.path):
                    skipped_dotfiles += 1
                    continue
                if member.size <= SMALL_FILE:
                    builder.add_small(member.path, reader.read())
                else:
                    builder.add_stream(member.path, reader, member.size)
            elif member.kind in (MemberKind.SYMLINK, MemberKind.HARDLINK):
                builder.add_link(member.path, member.link_target, str(member.kind))
            else:
                builder.log.warning("read", f"skipped {member.path}: devices, FIFOs and "
                                    "other special files are never published")
        # `tar czf x.tgz -C site .` lists "./": its files are the site, no wrapping folder
        manifest = builder.finish(deployment_id, site, reader.commit, created,
                                  strip_top=not reader.root_listed)
    except BaseException:
        builder.abort()
        raise
    if skipped_dotfiles:
        builder.log.info("read", f"left out {skipped_dotfiles} dotfiles (.git/, .env*, ...)")
    return BundleOutcome(manifest, reader.commit, reader.compressed_bytes,
                         getattr(builder, "settings", None))


def _maybe_published(path: str) -> bool:
    """Early dotfile filter: published as is, or once a top folder is stripped."""
    if is_published(path):
        return True
    _, _, rest = path.partition("/")
    return bool(rest) and is_published(rest)
