"""'Save and stop': what SIGTERM (a TPU VM preemption, a scheduler's kill) and the first Ctrl-C mean.

Before the run's state exists there is nothing to save, and either signal exits at once with
status 0. Once the loop has armed the handler, a signal only sets a flag that the loop reads
after every step: it saves a checkpoint and leaves, exit 0. A second Ctrl-C while that is under
way aborts (KeyboardInterrupt). With several processes, jax.distributed's own SIGTERM handler
relays a preemption to all of them (`requested` asks it), so no Python handler is installed.
"""

from __future__ import annotations

import signal
import threading

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _State:
  def __init__(self):
    self.depth = 0  # nested install() calls: launch.py's, then train()'s
    self.previous: dict[int, object] = {}
    self.armed = False
    self.received: str | None = None


_state = _State()


def _handle(signum: int, frame) -> None:
  if _state.received == 'SIGINT' and signum == signal.SIGINT:
    raise KeyboardInterrupt  # the second Ctrl-C: the user wants out now
  if not _state.armed:
    raise SystemExit(0)
  _state.received = signal.Signals(signum).name


def install() -> bool:
  """Installs the handlers (main thread only); returns whether this call did. Pair with `uninstall`."""
  if threading.current_thread() is not threading.main_thread():
    return False
  if _state.depth == 0:
    _state.previous = {s: signal.signal(s, _handle) for s in _SIGNALS}
    _state.received = None
  _state.depth += 1
  return True


def uninstall() -> None:
  if _state.depth == 0:
    return
  _state.depth -= 1
  if _state.depth == 0:
    for s, previous in _state.previous.items():
      signal.signal(s, previous)
    _state.armed = False


def arm() -> None:
  """From now on a signal means 'save and stop at the next step' rather than 'exit now'."""
  _state.armed = True


def requested(step: int, multi_process: bool) -> str | None:
  """The signal's name ('SIGTERM', 'SIGINT') if the run should save and stop after `step`."""
  if multi_process:
    from jax.experimental import multihost_utils
    # All processes must stop at the same step; jax.distributed relays the notice.
    return 'SIGTERM' if multihost_utils.reached_preemption_sync_point(step) else None
  return _state.received
