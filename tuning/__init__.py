"""QLoRA fine-tuning dashboard backend: config, data, models, the training recipe, runs.

The UI (app.py) and the CLI (python -m tuning) both call these plain functions; training
itself always runs in its own process (tuning.runs.runner starts it).
"""
