"""Training, in its own process: entry.py opens the run folder and records the process (python -m tuning
train lands there from every launcher), trainer.py builds and runs the trainer for every objective (SFT
on TRL's SFTTrainer), preference.py builds DPO, ORPO and KTO on the same setup, distributed.py launches
and coordinates several processes or machines, tracking.py wires trackers and faults.py injects the
faults tests ask for."""
