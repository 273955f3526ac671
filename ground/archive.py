"""Per-object tar archives of the ground's per-view images (depth PNGs, decoded views).

A 100-drone ground makes 200 depth images a second. One file per image cost 0.2 to 1.2 ms of kernel
time each on the 2-core test machine (ext4: an inode and a directory entry per view, more with two
threads creating files at once), a tenth to a quarter of the ground's whole time per view; appending
to one open-ended file per object costs a few microseconds. So each object's images go into one tar
archive (POSIX ustar, members ``<u>.png``, ``u`` the view's unwrapped sequence number), the layout
WebDataset uses for the same reason; ``tar xf depth.tar`` or Python's :mod:`tarfile` reads it.

The work archive has no end-of-archive marker (it keeps growing); a snapshot copies it and adds the
marker (:func:`finish_copy`), so every snapshot's archive is complete and is never written again.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time

_BLOCK = tarfile.BLOCKSIZE  # 512 bytes
#: Two zero blocks end a tar archive (POSIX ustar).
END_OF_ARCHIVE = b"\0" * (2 * _BLOCK)


def member_bytes(name: str, data: bytes, mtime: float | None = None) -> bytes:
    """One tar member: its ustar header (:class:`tarfile.TarInfo`), ``data``, zero padding to 512 bytes.

    Args:
        name: the member's file name (ASCII, at most 100 characters). data: its content.
        mtime: modification time, unix seconds (None: now).

    Raises:
        ValueError: a name that a ustar header cannot hold.
    """
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(time.time() if mtime is None else mtime)
    return info.tobuf(tarfile.USTAR_FORMAT) + bytes(data) + b"\0" * (-len(data) % _BLOCK)


def append(path: str, name: str, data: bytes) -> None:
    """Append one member to the archive at ``path`` (made, with its folder, on the first member).

    One ``write`` of the whole member; where it fails (a full disk), the archive is cut back to where it
    was, so that a torn member never hides the ones after it.

    Args:
        path: the archive, a plain string: pathlib interns every new path part, and a path object per
            view made the interpreter's intern table grow for the whole run (measured: about 1.2 kB a
            view, a 10-minute 100-drone run's resident memory crept up with it).
        name: the member's name. data: its bytes.

    Raises:
        OSError: the archive cannot be written (it is left as it was, where the file system allows).
        ValueError: a name that a ustar header cannot hold.
    """
    member = member_bytes(name, data)
    try:
        f = open(path, "ab")
    except FileNotFoundError:  # the object's first member: make its folder (not every view)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "ab")
    with f:
        start = f.tell()
        try:
            f.write(member)
            f.flush()
        except OSError:
            try:
                f.truncate(start)
            except OSError:
                pass
            raise


def finish_copy(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Copy a work archive to ``dst`` and end it (two zero blocks): a complete tar archive. A missing
    ``src`` (no member yet) gives an empty archive.

    Returns:
        the bytes of members copied.

    Raises:
        OSError: ``dst`` cannot be written.
    """
    if os.path.exists(src):
        shutil.copyfile(src, dst)
        n = os.path.getsize(dst)
    else:
        open(dst, "xb").close()
        n = 0
    with open(dst, "ab") as f:
        f.write(END_OF_ARCHIVE)
    return n


def iter_members(path: str | os.PathLike):
    """Each file member of a tar archive as ``(name, bytes)``, in archive order, one at a time (memory
    bounded by the largest member, not the archive).

    Raises:
        OSError: unreadable file. tarfile.TarError: not a tar archive.
    """
    with tarfile.open(path, "r:") as t:
        for m in t:
            if m.isfile():
                f = t.extractfile(m)
                yield m.name, f.read() if f is not None else b""


def read_members(path: str | os.PathLike) -> dict[str, bytes]:
    """Every member of a tar archive, ``{name: bytes}`` in archive order (a later member of the same
    name replaces an earlier one, as ``tar x`` does).

    Raises:
        OSError: unreadable file. tarfile.TarError: not a tar archive.
    """
    return dict(iter_members(path))
