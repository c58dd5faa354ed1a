"""What SIGTERM (a TPU VM preemption, a scheduler's kill) and Ctrl-C mean.

Training: once the loop has armed the handler, a signal only sets a flag that the loop reads
after every step: it saves a checkpoint and leaves, exit 0. Before the run's state exists there
is nothing to save, and either signal raises `Stopped` at once (the command line exits 0 for a
training run). A second Ctrl-C while a save is under way aborts (KeyboardInterrupt).
A command that only reads a run (sample, attack, explain, bench) is never armed: a signal raises
`Stopped`, which the command line reports as "stopped" with status 128 + the signal's number, and
such commands call `check()` between chunks of work. Python runs a handler only when the main
thread runs Python, not while it waits on one long XLA computation (a 100,000-step PGD attack), so
the command line also gives `install` an `end` that a thread of its own calls as soon as the
signal arrives (through the interpreter's wakeup fd), unless a `deferred()` block is writing files.
Python cannot raise from everywhere: raised
inside a garbage-collection callback or a `__del__` (JAX runs one at every collection) the
exception would be printed and lost, so there it is swallowed and the flag stays set for the next
`check()`, and the signal is delivered once more a moment later.
With several processes, jax.distributed's own SIGTERM handler relays a preemption to all of them
(`requested` asks it), so no Python handler is installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REDELIVERY_DELAY_S = 0.2


class Stopped(BaseException):  # like KeyboardInterrupt: no `except Exception` may swallow it
  """A stop signal ended the command before its work was done."""

  def __init__(self, signal_name: str):
    super().__init__(signal_name)
    self.signal_name = signal_name
    self.exit_code = 128 + signal.Signals[signal_name].value


class _State:
  def __init__(self):
    self.depth = 0  # nested install() calls: the command line's, then train()'s
    self.previous: dict[int, object] = {}
    self.previous_unraisable_hook = None
    self.armed = False
    self.received: str | None = None
    self.redelivering = False
    self.lock = threading.Lock()  # `deferred` flips `armed` under it; the watching thread reads it under it
    self.wakeup: tuple[int, int] | None = None  # the watching thread's pipe (read end, write end)
    self.previous_wakeup_fd = -1


_state = _State()


def _handle(signum: int, frame) -> None:
  name = signal.Signals(signum).name
  if _state.redelivering:
    _state.redelivering = False
  elif _state.received == 'SIGINT' and signum == signal.SIGINT:
    raise KeyboardInterrupt  # the second Ctrl-C: the user wants out now
  _state.received = name
  if not _state.armed:
    raise Stopped(name)


def _unraisable(hook_args) -> None:
  """A Stopped raised where Python cannot propagate it: keep the flag and deliver the signal again."""
  if not isinstance(hook_args.exc_value, Stopped):
    _state.previous_unraisable_hook(hook_args)
    return
  _state.redelivering = True
  signum = signal.Signals[hook_args.exc_value.signal_name].value
  threading.Timer(REDELIVERY_DELAY_S, os.kill, (os.getpid(), signum)).start()


def install(end: Callable[[Stopped], None] | None = None) -> bool:
  """Installs the handlers (main thread only); returns whether this call did. Pair with `uninstall`.

  `end` (a command that is never armed): called on a thread of its own when a signal arrives outside
  `deferred()`, even while the main thread waits on XLA; it must not return (it exits the process)."""
  if threading.current_thread() is not threading.main_thread():
    return False
  if _state.depth == 0:
    _state.previous = {s: signal.signal(s, _handle) for s in _SIGNALS}
    _state.previous_unraisable_hook, sys.unraisablehook = sys.unraisablehook, _unraisable
    _state.received = None
    if end is not None:
      _watch(end)
  _state.depth += 1
  return True


def _watch(end: Callable[[Stopped], None]) -> None:
  """The C-level handler writes each signal's number to the wakeup fd at once: a thread reads it there."""
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  _state.previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  _state.wakeup = (read_fd, write_fd)

  def watch() -> None:
    while number := os.read(read_fd, 1):
      if number[0] not in _SIGNALS:
        continue
      with _state.lock:
        if not _state.armed:
          end(Stopped(signal.Signals(number[0]).name))
    os.close(read_fd)

  threading.Thread(target=watch, name='jaxlab-stop', daemon=True).start()


def uninstall() -> None:
  if _state.depth == 0:
    return
  _state.depth -= 1
  if _state.depth == 0:
    for s, previous in _state.previous.items():
      signal.signal(s, previous)
    sys.unraisablehook = _state.previous_unraisable_hook
    _state.armed = False
    if _state.wakeup is not None:
      signal.set_wakeup_fd(_state.previous_wakeup_fd)
      os.close(_state.wakeup[1])  # the watching thread reads the end of the pipe and leaves
      _state.wakeup = None


def arm() -> None:
  """From now on a signal means 'save and stop at the next step' rather than 'stop now'."""
  _state.armed = True


def check() -> None:
  """Raises Stopped if a signal has arrived and nothing is armed to save: a reading command's loops call it."""
  if _state.received and not _state.armed and _state.depth:
    raise Stopped(_state.received)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """Within the block (a command writing its results) a signal waits: the files are written whole."""
  with _state.lock:
    armed, _state.armed = _state.armed, True
  try:
    yield
  finally:
    with _state.lock:
      _state.armed = armed


def requested(step: int, multi_process: bool) -> str | None:
  """The signal's name ('SIGTERM', 'SIGINT') if the run should save and stop after `step`."""
  if multi_process:
    from jax.experimental import multihost_utils
    # All processes must stop at the same step; jax.distributed relays the notice.
    return 'SIGTERM' if multihost_utils.reached_preemption_sync_point(step) else None
  return _state.received
