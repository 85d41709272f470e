"""Copies what the sidecar needs at run time, and nothing else, into a root filesystem for a ``FROM scratch`` image.

    python hack/sidecar_rootfs.py VENV ROOTFS

Run by the Dockerfile's ``sidecar-build`` stage with the base image's own Python. Why: the sidecar runs
in every pod of every StreamGroup, so its image is pulled onto every node; a Python base image brings a
shell, apt, dpkg's database, perl-base and a full standard library, none of which the sidecar uses, and
each is also something to patch. What it does need is the interpreter, the parts of the standard
library it imports, the shared libraries those load, the virtual environment, CA certificates and a
passwd entry for its user. Which shared libraries is asked of the dynamic loader (``ldd``) for every
ELF file copied, so a wheel that starts linking a new library brings it along; libgcc_s is added by
name because glibc opens it only when a thread is cancelled.

Paths are copied as they are in the base (``/usr/local`` in the official Python images, ``/usr`` in
Debian's), symlinks as symlinks, so the venv's ``bin/python`` chain and merged-/usr links
(``/lib -> usr/lib``) resolve in the new root as they did in the old.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Parts of the standard library the sidecar never imports (GUI, editors, test suites, installers, 2to3).
PRUNED = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
          "venv", "config-3.11-x86_64-linux-gnu", "sqlite3", "dbm", "curses"}
PRUNED_FILES = ("_test", "_tkinter", "_sqlite3", "_curses", "_dbm", "_gdbm", "xxlimited", "_ctypes_test",
                "_testcapi", "_testbuffer", "_testinternalcapi", "_testmultiphase", "_xxtestfuzz", "readline",
                "audioop", "_lsprof", "nis", "ossaudiodev", "spwd")
LOADER_ALWAYS = ("libgcc_s.so.1",)
ETC = {
    "passwd": "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    "group": "root:x:0:\nnonroot:x:65532:\n",
    # glibc reads it for getaddrinfo; without it "localhost" could go to DNS.
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}


class Copier:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: set[str] = set()

    def path(self, source: str) -> None:
        """``source`` into the new root, each symlink on the way recreated and followed."""
        if source in self.done:
            return
        self.done.add(source)
        parts = Path(source).parts
        current = Path("/")
        for index, part in enumerate(parts[1:], start=1):
            current = current / part
            if current.is_symlink():
                target = os.readlink(current)
                link = self.root / current.relative_to("/")
                if not link.is_symlink():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(target)
                # One link at a time (not resolve()): every link of a chain is recreated on the way.
                resolved = Path(os.path.normpath(current.parent / target))
                rest = Path(*parts[index + 1:]) if index + 1 < len(parts) else None
                self.path(str(resolved / rest) if rest else str(resolved))
                return
        destination = self.root / Path(source).relative_to("/")
        if Path(source).is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)

    def tree(self, source: Path, prune: bool = False) -> None:
        for folder, dirs, files in os.walk(source):
            if prune:
                dirs[:] = [d for d in dirs if d not in PRUNED]
            self.path(folder)
            for name in files:
                if prune and name.startswith(PRUNED_FILES):
                    continue
                full = os.path.join(folder, name)
                if os.path.islink(full):
                    self.path(full)
                else:
                    destination = self.root / os.path.relpath(full, "/")
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(full, destination)
                    self.done.add(full)
            for name in dirs:
                if os.path.islink(os.path.join(folder, name)):
                    self.path(os.path.join(folder, name))


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(4) == b"\x7fELF"
    except OSError:
        return False


def shared_libraries(elf: str) -> set[str]:
    out = subprocess.run(["ldd", elf], capture_output=True, text=True, check=False).stdout
    found = set()
    for line in out.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1 and words[words.index("=>") + 1].startswith("/"):
            found.add(words[words.index("=>") + 1])
        elif words and words[0].startswith("/"):
            found.add(words[0])  # the dynamic loader itself
    return found


def main(venv: str, root: str) -> int:
    copier = Copier(Path(root))
    executable = os.path.realpath(sys.executable)
    copier.path(os.path.join(venv, "bin", "python"))
    copier.path(executable)
    # Compiled once here: the image is read-only and runs with PYTHONDONTWRITEBYTECODE.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    subprocess.run([executable, "-m", "compileall", "-q", "-j0", "-x", r"/(test|tests|idlelib|tkinter|lib2to3)/",
                    str(stdlib)], check=False)
    copier.tree(stdlib, prune=True)
    platstdlib = Path(sysconfig.get_paths()["platstdlib"])
    if platstdlib != stdlib:
        copier.tree(platstdlib, prune=True)
    copier.tree(Path(venv))
    elves = [path for path in copier.done if os.path.isfile(path) and not os.path.islink(path) and is_elf(path)]
    libraries: set[str] = set()
    for elf in elves:
        libraries |= shared_libraries(elf)
    for library in sorted(libraries):
        copier.path(library)
    for name in LOADER_ALWAYS:
        for folder in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
            if os.path.exists(os.path.join(folder, name)):
                copier.path(os.path.join(folder, name))
                break
    for bundle in ("/etc/ssl/certs/ca-certificates.crt",):
        if os.path.exists(bundle):
            copier.path(bundle)
    for name, text in ETC.items():
        (Path(root) / "etc" / name).write_text(text)
    for folder, mode in (("tmp", 0o1777), ("home/nonroot", 0o755)):
        (Path(root) / folder).mkdir(parents=True, exist_ok=True)
        os.chmod(Path(root) / folder, mode)
    os.chown(Path(root) / "home/nonroot", 65532, 65532)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
