"""Training: the run's trainer for every objective (trainer.py), preference tuning's data and trainers
(preference.py), launching on several processes or machines (distributed.py), trackers (tracking.py)
and the faults tests inject (faults.py)."""
