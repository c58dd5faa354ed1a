"""One run (or sweep, or search) per workdir at a time.

A local workdir is held by an OS lock (`flock`) on `<workdir>/.lock`: the kernel releases it
when the holder exits in any way, SIGKILL included, so a crashed run never leaves it stuck. The
file also names its holder (host, pid, start time) for the error a second launch prints.

A bucket workdir (gs://) has no OS lock. There the lock is the record itself: a record whose
holder is a dead process on this host is stale and taken over; one from another host is
refused with the hint to delete it if that host is gone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import IO

import ml_collections
from etils import epath

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError

LOCK_FILE = '.lock'


class WorkdirBusyError(ConfigError):
  """Another live process holds the workdir."""


def _me(what: str) -> dict[str, object]:
  return {'host': socket.gethostname(), 'pid': os.getpid(), 'what': what,
          'since': time.strftime('%Y-%m-%d %H:%M:%S')}


def describe(record: dict[str, object] | None) -> str:
  if not record:
    return 'another process'
  return f'a {record.get("what", "run")} (pid {record.get("pid")} on {record.get("host")}, since {record.get("since")})'


def _read(path: epath.Path) -> dict[str, object] | None:
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def _alive(pid: object) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """Held from `acquire()` to `release()` (or the process's end); also a context manager."""

  def __init__(self, workdir: str, what: str = 'run'):
    self.workdir, self.what = workdir, what
    self.path = epath.Path(workdir) / LOCK_FILE
    self._file: IO[str] | None = None
    self._record_held = False

  def acquire(self) -> WorkdirLock:
    """Creates the workdir if needed and takes the lock; a live holder is a WorkdirBusyError."""
    epath.Path(self.workdir).mkdir(parents=True, exist_ok=True)
    if '://' in self.workdir:
      self._acquire_record()
    else:
      self._acquire_flock()
    return self

  def _busy(self, holder: dict[str, object] | None, hint: str = '') -> WorkdirBusyError:
    return WorkdirBusyError(f'workdir {self.workdir} is in use by {describe(holder)}; wait for it to finish '
                            f'or use another --workdir{hint}')

  def _acquire_flock(self) -> None:
    handle = open(self.path, 'a+')
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      handle.close()
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise self._busy(_read(self.path)) from None
      raise
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_me(self.what)))
    handle.flush()
    self._file = handle

  def _acquire_record(self) -> None:
    holder = _read(self.path)
    if holder is not None:
      same_host = holder.get('host') == socket.gethostname()
      if not same_host or _alive(holder.get('pid')):
        raise self._busy(holder, '' if same_host else f' (if that host is gone, delete {self.path})')
    self.path.write_text(json.dumps(_me(self.what)))
    self._record_held = True

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
    if self._record_held:
      self.path.unlink(missing_ok=True)
      self._record_held = False

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def holder(workdir: str) -> dict[str, object] | None:
  """Who holds `workdir` right now ({} when the holder is unknown), or None if nobody does."""
  path = epath.Path(workdir) / LOCK_FILE
  if '://' in workdir:
    record = _read(path)
    if record is None or (record.get('host') == socket.gethostname() and not _alive(record.get('pid'))):
      return None
    return record
  try:
    handle = open(path)
  except FileNotFoundError:
    return None
  with handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
      return _read(path) or {}
    fcntl.flock(handle, fcntl.LOCK_UN)
  return None


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict,
                    restart: bool = False) -> WorkdirLock | None:
  """Makes `workdir` (a local path or a bucket URL such as gs://...) usable for `config` and holds it.

  Returns the workdir's lock, held by process 0 (None on the others) until the run releases it:
  a second run on the same workdir is a WorkdirBusyError naming the holder. A workdir whose
  config.json differs is an error naming the keys; with `restart` process 0 moves the old run
  aside to `<workdir>.old-<timestamp>` (never deleted). The checkpoint's own config is compared
  at restore (train.py), so a missing or unreadable config.json loses nothing.
  """
  import jax  # here, not at the top: sweep and search parents hold workdirs without JAX

  from jaxlab import parallel
  if not workdir:
    raise ConfigError('--workdir is empty; give a directory (or leave the flag out for runs/<config>)')
  _check_writable(workdir)
  lock = WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
  try:
    saved = config_lib.read_saved(workdir)
    if restart:
      if '://' in workdir:
        raise ConfigError(f'--restart cannot move a bucket workdir aside; delete {workdir} or use another --workdir')
      if jax.process_index() == 0 and _holds_a_run(workdir):
        aside = f'{workdir.rstrip("/")}.old-{time.strftime("%Y%m%d-%H%M%S")}'
        try:
          os.rename(workdir, aside)
        except OSError as e:
          raise ConfigError(f'--restart could not move {workdir} aside to {aside}: {e.strerror or e}') from None
        lock.release()
        _check_writable(workdir)
        lock = WorkdirLock(workdir).acquire()
        print(f'Moved the previous run to {aside}', flush=True)
      parallel.barrier('jaxlab_prepare_workdir')  # the others must not see the old run half moved
    elif saved is not None:
      config_lib.check_same(saved, config, f'workdir {workdir} holds a run with a different config')
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  return lock


def _check_writable(workdir: str) -> None:
  import jax
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_test.{jax.process_index()}.{os.getpid()}'  # processes of one job share the workdir
    probe.write_text('ok')
    probe.unlink()
  except ImportError as e:  # a bucket URL whose filesystem package is missing
    raise ConfigError(f'workdir {workdir}: {e}') from None
  except OSError as e:
    raise ConfigError(f'workdir {workdir} is not writable: {e.strerror or e}') from None


def _holds_a_run(workdir: str) -> bool:
  return any(p.name not in (LOCK_FILE,) and not p.name.startswith('.write_test.')
             for p in epath.Path(workdir).iterdir())
