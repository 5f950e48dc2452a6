"""The real darktable (Debian's 4.2.1), driven headless under Xvfb by a Lua start-up script, and
the independent XMP readers (ExifTool, exiv2, gexiv2), for the slow real-client tests.

darktable runs as ``darktable --configdir D/cfg --cachedir D/cache --library D/library.db
--disable-opencl --luacmd "dofile('D/script.lua')"`` on a free X display; the script ends with
``os.exit(0)`` (``dt.control.quit()`` hangs when called from a start-up script). Each run has a
deadline and only the processes started here are ever killed (their own process group).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DARKTABLE = shutil.which("darktable")
XVFB = shutil.which("Xvfb")
EXIFTOOL = shutil.which("exiftool")
EXIV2 = shutil.which("exiv2")
SYSTEM_PYTHON = "/usr/bin/python3"
START_TIMEOUT = 30.0  # seconds for darktable to run its script (it takes 2-4 s here)
START_TRIES = 3  # python3-gi and gir1.2-gexiv2-0.10 live in Debian's own Python


def missing_darktable() -> str | None:
    """Why the darktable tests cannot run here, or None."""
    if DARKTABLE is None or XVFB is None:
        return "darktable and Xvfb not installed (apt-get install darktable xvfb)"
    return None


def darktable_version() -> str:
    out = subprocess.run([DARKTABLE or "darktable", "--version"], capture_output=True, text=True, timeout=60).stdout
    for word in out.split():
        if word[:1].isdigit():
            return word
    return "?"


def lua_str(text: str) -> str:
    """``text`` as a Lua string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def _stop(proc: subprocess.Popen) -> None:
    """End a process started here, and its children (its own session and group), never others."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            continue


def _where(pid: int) -> str:
    """What a hung process waits on (Linux /proc), for the error message."""
    try:
        tasks = sorted(os.listdir(f"/proc/{pid}/task"))
        return "; ".join(f"{Path(f'/proc/{pid}/task/{t}/comm').read_text().strip()}:"
                         f"{Path(f'/proc/{pid}/task/{t}/wchan').read_text().strip()}" for t in tasks[:40])
    except OSError:
        return "?"


@contextmanager
def xvfb() -> Iterator[str]:
    """A private X display (``:N``) for as long as the block runs."""
    assert XVFB is not None
    for n in range(70 + os.getpid() % 50, 400):
        if os.path.exists(f"/tmp/.X11-unix/X{n}") or os.path.exists(f"/tmp/.X{n}-lock"):
            continue
        proc = subprocess.Popen([XVFB, f":{n}", "-nolisten", "tcp", "-screen", "0", "1280x800x24"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None and not os.path.exists(f"/tmp/.X11-unix/X{n}"):
            time.sleep(0.05)
        if proc.poll() is None and os.path.exists(f"/tmp/.X11-unix/X{n}"):
            try:
                yield f":{n}"
            finally:
                _stop(proc)
            return
        _stop(proc)  # another server took that number meanwhile: try the next
    raise RuntimeError("no free X display number")


@dataclass
class Darktable:
    """One darktable setup (config, cache and library in ``home``) on ``display``."""

    home: Path
    display: str

    @property
    def library(self) -> Path:
        return self.home / "library.db"

    def _start(self, lua: str) -> subprocess.Popen:
        self.home.mkdir(parents=True, exist_ok=True)
        # darktable leaves its lock files (a PID in each) after os.exit; a later start whose old
        # PID now belongs to any live process "opens the images in the running instance" and
        # hangs (measured). Ours have all exited (run/running wait for them): remove them.
        for lock in (Path(f"{self.library}.lock"), self.home / "cfg" / "data.db.lock"):
            lock.unlink(missing_ok=True)
        log = self.home / "lua.log"
        log.unlink(missing_ok=True)
        script = self.home / "script.lua"
        script.write_text(PRELUDE.replace("LOG", lua_str(str(log))) + lua + "\nlogfile:close()\nos.exit(0)\n",
                          encoding="utf-8")
        env = {**os.environ, "DISPLAY": self.display, "HOME": str(self.home / "home"),
               "XDG_CONFIG_HOME": str(self.home / "xdg-config"), "XDG_CACHE_HOME": str(self.home / "xdg-cache")}
        cmd = [DARKTABLE or "darktable", "--configdir", str(self.home / "cfg"), "--cachedir", str(self.home / "cache"),
               "--library", str(self.library), "--disable-opencl", "--luacmd", f"dofile({lua_str(str(script))})"]
        with open(self.home / "darktable.out", "wb") as fh:
            return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def _launch(self, lua: str) -> subprocess.Popen:
        """Start darktable and wait until the script runs. darktable 4.2.1 sometimes deadlocks
        while starting (measured: about one start in ten here; its main and Lua threads both
        wait on a futex, the script never runs): such a start is ended and tried again."""
        log = self.home / "lua.log"
        for _ in range(START_TRIES):
            proc = self._start(lua)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                if log.exists() and log.read_text(encoding="utf-8").startswith("started"):
                    return proc
                time.sleep(0.1)
            if proc.poll() is not None:
                return proc  # finished (or failed) already: run() reports which
            _stop(proc)
        raise RuntimeError(f"darktable did not start its script in {START_TRIES} tries")

    def run(self, lua: str, timeout: float = 120) -> list[str]:
        """Run ``lua`` (after a prelude defining ``dt``, ``log(text)`` and ``find(path)``) in a fresh
        darktable; returns the lines it logged. Raises RuntimeError if darktable fails or hangs."""
        proc = self._launch(lua)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"darktable did not finish in {timeout:.0f}s: {_where(proc.pid)}") from None
        finally:
            _stop(proc)
        log, out = self.home / "lua.log", self.home / "darktable.out"
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        if code != 0 or "done" not in lines:
            tail = out.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"darktable exited {code}; logged {lines[-5:]}; output: {tail}")
        return lines

    @contextmanager
    def running(self, timeout: float = 300) -> Iterator[None]:
        """darktable started with this library and left open (its Lua script waits) while the
        block runs; then told to exit."""
        stop = self.home / "stop"
        stop.unlink(missing_ok=True)
        lua = (f'log("ready")\nlocal t = 0\nwhile t < {int(timeout * 10)} do\n'
               f'  local f = io.open({lua_str(str(stop))}, "r")\n  if f then f:close() break end\n'
               '  dt.control.sleep(100)\n  t = t + 1\nend\nlog("done")')
        proc = self._launch(lua)
        try:
            deadline = time.monotonic() + timeout
            log = self.home / "lua.log"
            while "ready" not in (log.read_text(encoding="utf-8") if log.exists() else ""):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("darktable did not start")
                time.sleep(0.1)
            yield
        finally:
            stop.write_text("")
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            _stop(proc)

    def import_and_rate(self, ratings: dict[Path, int | None]) -> dict[str, int]:
        """Import each photo (darktable gives its initial rating, reads embedded XMP and sidecars)
        and set the rating given (-1 rejects; None leaves darktable's). Returns darktable's ratings."""
        lines = []
        for path, rating in ratings.items():
            lines.append(f"do local img = dt.database.import({lua_str(str(path))})")
            if rating is not None:
                lines.append(f"img.rating = {int(rating)}")
            lines.append("end")
        return self._ratings(self.run("\n".join(lines) + "\n" + LOG_ALL))

    def rate(self, ratings: dict[Path, int]) -> dict[str, int]:
        """Change ratings of photos already in the library (darktable writes their sidecars)."""
        lines = [f"find({lua_str(str(p))}).rating = {int(r)}" for p, r in ratings.items()]
        return self._ratings(self.run("\n".join(lines) + "\n" + LOG_ALL))

    def touch_all(self) -> dict[str, int]:
        """Attach a tag to every photo: darktable writes every sidecar again from its library."""
        return self._ratings(self.run(TOUCH_ALL + LOG_ALL))

    def reimport(self, paths: list[Path]) -> dict[str, int]:
        """Import photos darktable already has: it reads their sidecars again."""
        lines = [f"dt.database.import({lua_str(str(p))})" for p in paths]
        return self._ratings(self.run("\n".join(lines) + "\n" + LOG_ALL))

    @staticmethod
    def _ratings(lines: list[str]) -> dict[str, int]:
        out = {}
        for line in lines:
            if line.startswith("rating\t"):
                _, path, rating = line.split("\t")
                out[path] = int(rating)
        return out


PRELUDE = """local dt = require "darktable"
logfile = io.open(LOG, "w")
function log(text) logfile:write(text .. "\\n"); logfile:flush() end
log("started")
function find(path)
  for _, img in ipairs(dt.database) do
    if img.path .. "/" .. img.filename == path then return img end
  end
  error("not in the library: " .. path)
end
"""
LOG_ALL = """for _, img in ipairs(dt.database) do
  log("rating\\t" .. img.path .. "/" .. img.filename .. "\\t" .. img.rating)
end
log("done")
"""
TOUCH_ALL = """local tag = dt.tags.create("ilgnet-test|touched")
for _, img in ipairs(dt.database) do dt.tags.attach(tag, img) end
"""


# --------------------------------------------------------------------------- independent readers


def exiftool_rating(sidecar: Path) -> dict:
    out = subprocess.run([EXIFTOOL or "exiftool", "-j", "-XMP:all", str(sidecar)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return json.loads(out)[0]


def exiv2_tags(path: Path) -> dict[str, str]:
    """``exiv2 -px`` (0.27 reads a standalone .xmp this way; ``-pX`` fails on one)."""
    out = subprocess.run([EXIV2 or "exiv2", "-px", str(path)], capture_output=True, text=True, timeout=60).stdout
    tags = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4:
            tags[parts[0]] = parts[3]
    return tags


GEXIV2_READ = """import json, sys, warnings
warnings.simplefilter("ignore")
import gi
gi.require_version("GExiv2", "0.10")
from gi.repository import GExiv2
m = GExiv2.Metadata()
m.open_path(sys.argv[1])
print(json.dumps({t: m.get_tag_string(t) for t in m.get_xmp_tags()}))
"""


def missing_gexiv2() -> str | None:
    if not os.path.exists(SYSTEM_PYTHON):
        return "no system python3 for gexiv2"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GExiv2', '0.10')"],
                           capture_output=True, timeout=60)
    return None if probe.returncode == 0 else "gexiv2 not installed (apt-get install python3-gi gir1.2-gexiv2-0.10)"


def gexiv2_tags(path: Path) -> dict[str, str]:
    out = subprocess.run([SYSTEM_PYTHON, "-c", GEXIV2_READ, str(path)], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    return json.loads(out)
