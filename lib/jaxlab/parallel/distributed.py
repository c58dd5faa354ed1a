"""Joining a multi-process (multi-host) JAX job before any JAX computation.

Where the settings come from, first match wins:
  1. explicit values (launch.py's --coordinator_address / --num_processes / --process_id);
  2. environment variables JAXLAB_COORDINATOR_ADDRESS / JAXLAB_NUM_PROCESSES / JAXLAB_PROCESS_ID;
  3. a SLURM job step of several tasks (`srun`, e.g. from `launch.py slurm`): jax reads the process
     count, rank and coordinator (the step's first node) from SLURM_* variables; on GPUs each
     process takes the GPU of its local rank unless JAX_LOCAL_DEVICE_IDS says otherwise;
  4. a Cloud TPU VM: `jax.distributed.initialize()` with no arguments reads the slice's topology
     from the TPU metadata (and works on a single-host slice too).
Otherwise the run stays a single process.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Mapping

from jaxlab.errors import ConfigError, JaxlabError, first_line

ENV_PREFIX = 'JAXLAB_'
GOOGLE_PCI_VENDOR = '0x1ae0'
# Device ids of TPU chips (v3, v4, v5p, v5e, v6e, 7x; as jax's hardware_utils lists them). Other
# Google PCI devices, e.g. the gVNIC network card of any GCE VM, share the vendor id.
TPU_PCI_DEVICES = frozenset({'0x0027', '0x0056', '0x005e', '0x0062', '0x0063', '0x006f', '0x0076'})
# What jax's SLURM cluster detection reads (jax/_src/clusters/slurm_cluster.py).
SLURM_STEP_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')


@dataclasses.dataclass(frozen=True)
class Settings:
  """How this process joins the job; `auto` ('tpu' or 'slurm') means 'let jax read the cluster's own settings'."""

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: str = ''

  def describe(self) -> str:
    if self.auto == 'tpu':
      return 'the TPU slice'
    where = 'SLURM job' if self.auto == 'slurm' else f'coordinator {self.coordinator_address}'
    return f'{where} as process {self.process_id} of {self.num_processes}'


def on_tpu_vm(pci_root: str = '/sys/bus/pci/devices') -> bool:
  """True on a Cloud TPU VM (a TPU chip is on the PCI bus), without starting a JAX backend."""
  for device in glob.glob(os.path.join(pci_root, '*')):
    try:
      with open(os.path.join(device, 'vendor')) as vendor, open(os.path.join(device, 'device')) as device_id:
        if vendor.read().strip() == GOOGLE_PCI_VENDOR and device_id.read().strip() in TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


def _int(name: str, text: str | int | None) -> int | None:
  if text is None or text == '':
    return None
  try:
    return int(text)
  except ValueError:
    raise ConfigError(f'{name} must be an integer, got {text!r}') from None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, env: Mapping[str, str] = os.environ,
            tpu_vm: bool | None = None) -> Settings | None:
  """The settings to join a job with, or None for a single-process run."""
  address = coordinator_address or env.get(f'{ENV_PREFIX}COORDINATOR_ADDRESS') or None
  count = _int('num_processes', num_processes if num_processes is not None
               else env.get(f'{ENV_PREFIX}NUM_PROCESSES'))
  index = _int('process_id', process_id if process_id is not None else env.get(f'{ENV_PREFIX}PROCESS_ID'))
  if address or count is not None or index is not None:
    missing = [n for n, v in (('coordinator_address', address), ('num_processes', count),
                              ('process_id', index)) if v is None]
    if missing:
      raise ConfigError(f'a multi-process run needs coordinator_address, num_processes and process_id; '
                        f'missing: {", ".join(missing)} (flags --NAME or env {ENV_PREFIX}NAME)')
    if count < 1 or not 0 <= index < count:
      raise ConfigError(f'process_id must be in [0, num_processes={count}), got {index}')
    return Settings(address, count, index)
  if all(name in env for name in SLURM_STEP_VARS):
    tasks = _int('SLURM_NTASKS', env['SLURM_NTASKS'])
    if tasks > 1:  # a single task (e.g. `srun python launch.py` on one GPU) stays a plain run
      return Settings(num_processes=tasks, process_id=_int('SLURM_PROCID', env['SLURM_PROCID']), auto='slurm')
  if tpu_vm if tpu_vm is not None else on_tpu_vm():
    return Settings(auto='tpu')
  return None


def initialize(settings: Settings | None) -> None:
  """Joins the job described by `settings` (no-op for None). Call before any JAX computation."""
  if settings is None:
    return
  import jax
  # Cross-process collectives of the CPU backend (tests, CPU clusters); accelerators ignore it.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    if settings.auto:
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                                 num_processes=settings.num_processes, process_id=settings.process_id)
  except RuntimeError as e:  # XlaRuntimeError: the coordinator is unreachable or a process never came
    raise JaxlabError(f'could not join the multi-process job ({settings.describe()}): {first_line(e)}') from None
