"""A finished upload's staged folder leaves the deployment's path at once and is removed
on a thread.

Why: `_complete` removed it (`<id>.files/`: the list, the record, the blobs' pack) before
the alias moved, in the request of a one-file redeploy; on this machine's ext4 that
rmtree took ~7 ms (median of 30, four files), more than the fast path's own work. Now it
is renamed into `staging/.discarded/` (one rename: the deployment's folder is gone as
before, for every reader) and a daemon thread removes what is there. A process that ends
first leaves it there; the next discard's thread, in any process, removes it then.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from pathlib import Path

TRASH = ".discarded"  # in staging: a dot name, which no upload's or bundle's key has
_logger = logging.getLogger("pushsite.discarding")
_queue: queue.SimpleQueue[Path] = queue.SimpleQueue()
_started = threading.Lock()
_thread: list[threading.Thread] = []


def discard_folder(folder: Path) -> None:
    """Take `folder` away now (renamed into its parent's TRASH) and remove it on the
    remover thread; removed here when it cannot be moved (another file system, gone)."""
    trash = folder.parent / TRASH
    try:
        trash.mkdir(exist_ok=True)
        moved = trash / os.urandom(16).hex()  # not uuid: it imports platform (test_import_weight)
        folder.rename(moved)
    except FileNotFoundError:
        return
    except OSError as exc:
        _logger.debug("could not move %s aside (%s); removing it here", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return
    _queue.put(trash)
    with _started:
        if not _thread or not _thread[0].is_alive():
            _thread[:] = [threading.Thread(target=_remove, name="pushsite-discard",
                                           daemon=True)]
            _thread[0].start()


def _remove() -> None:
    """Empty each TRASH named, leftovers of an earlier process included."""
    while True:
        trash = _queue.get()
        try:
            for entry in list(trash.iterdir()):
                shutil.rmtree(entry, ignore_errors=True)
        except OSError as exc:  # the folder went (another process emptied and removed it)
            _logger.debug("could not empty %s: %s", trash, exc)

