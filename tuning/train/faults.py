"""Test-only fault injection for the training process, switched on by one clearly named
environment variable, so the fault tests can break a real `python -m tuning train` child
without monkeypatching its internals:

    TUNING_TEST_FAULT=nan_loss_after:2      from step 3 on, the adapter weights hold NaN, so the
                                            loss and the gradient norm become NaN (a real NaN run)
    TUNING_TEST_FAULT=oom_at_step:2         step 3 raises torch.OutOfMemoryError, as CUDA does
    TUNING_TEST_FAULT=disk_full_at_save:2   saving checkpoint-2 fails with ENOSPC after its files
                                            are written but before its COMPLETE marker
    TUNING_TEST_FAULT=slow_steps:0.5        sleep 0.5 s before each step (gives a test time to
                                            kill or stop the run mid-way)
    TUNING_TEST_FAULT=hold_at_step:3        after step 3, wait until the file <run folder>/release-fault
                                            exists (lets a test act at a known step, without timing)
    TUNING_TEST_FAULT=child_process:1       start a long-lived child process (like a data loader
                                            worker) that Stop must end along with the trainer

Several faults can be given separated by commas. Nothing here runs unless the variable is set.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

ENV = "TUNING_TEST_FAULT"


def active() -> dict[str, float]:
    """The faults named in $TUNING_TEST_FAULT, as {name: number}."""
    faults = {}
    for item in os.environ.get(ENV, "").split(","):
        name, _, value = item.strip().partition(":")
        if name:
            faults[name] = float(value or 0)
    return faults


def callbacks() -> list:
    """Trainer callbacks that inject the configured faults (an empty list normally)."""
    faults = active()
    if not faults:
        return []
    import torch
    from transformers import TrainerCallback

    class InjectFaults(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if "child_process" in faults:
                import subprocess
                import sys

                # Same process group as the trainer, as a DataLoader worker would be.
                self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
                print(f"fault: child process {self.child.pid}", flush=True)

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if "slow_steps" in faults:
                time.sleep(faults["slow_steps"])
            if "hold_at_step" in faults and state.global_step == int(faults["hold_at_step"]):
                release = Path(args.output_dir).parent / "release-fault"
                deadline = time.time() + 600
                while not release.exists() and time.time() < deadline:
                    time.sleep(0.05)
            if "oom_at_step" in faults and state.global_step == int(faults["oom_at_step"]):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by "
                                             f"{ENV})")
            if "nan_loss_after" in faults and state.global_step == int(faults["nan_loss_after"]):
                with torch.no_grad():
                    for name, param in model.named_parameters():
                        if "lora_A" in name:
                            param.fill_(float("nan"))

        def on_save(self, args, state, control, **kwargs):
            if "disk_full_at_save" in faults and state.global_step == int(faults["disk_full_at_save"]):
                raise OSError(errno.ENOSPC, f"No space left on device (injected by {ENV})")

    return [InjectFaults()]
