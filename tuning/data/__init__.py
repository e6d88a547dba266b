"""Training data: file -> records -> chat messages -> tokens with a loss mask -> a Dataset (in
memory, or through an Arrow cache for a big local source).

Every format ends up as a list of conversations, each a list of {"role", "content"} messages
(system / user / assistant / tool). Plain text for continued pre-training is a conversation of
one {"role": "text"} message: it skips the chat template and every token is trained on.
Problems never stop a load: each bad row is reported with its file, row number (1-based, as an
editor shows it) and field, and left out ("drop"); the report says enough to fix the file.

The modules, each importing only those listed before it:
  formats.py     reading files (JSON, JSONL, CSV/TSV, Parquet, TXT, folders, Hub ids) into records
  normalize.py   one record -> messages for every format, format detection, column maps, validation
  loading.py     a source -> LoadedData (valid rows, their file and row, problems), pages, the split
  tokens.py      the chat template and loss mask, tokenized rows, the SFT Dataset, the token view
  arrow_data.py  a big local source's rows and tokenized rows in a memory-mapped Arrow cache
  general.py     general rows the base already answers, mixed into a small dataset, and their checks
  slots.py       slot checks: held-out questions per thing the data names (auto for name and maker)
  training.py    which rows are trained on and held out, and prepare: the training and held-out Datasets
  stats.py       token statistics, duplicates and the `inspect` report
  pairs.py       preference data (DPO/ORPO pairs, KTO labels), on top of normalize and tokens

This file only re-exports what callers outside the package use as `data.X`; the modules never
import it, so none of them depends on another through it. A test that replaces a function must
replace it in the module that calls it (tokenize_conversation in tokens, read_path in loading),
not here.
"""

from __future__ import annotations

from tuning.data.formats import HUB_PREVIEW_ROWS, DataError
from tuning.data.loading import (LoadedData, demo_files, load, load_config_dataset, load_eval, load_preview,
                                 page_count, preview, split, split_positions)
from tuning.data.normalize import FORMATS, parse_expect
from tuning.data.stats import report, statistics
from tuning.data.tokens import to_dataset, token_view, tokenize_conversation
from tuning.data.training import heldout_rows, prepare, scored

__all__ = [
    "FORMATS", "HUB_PREVIEW_ROWS", "DataError", "LoadedData", "demo_files", "heldout_rows", "load",
    "load_config_dataset", "load_eval", "load_preview", "page_count", "parse_expect", "prepare", "preview",
    "report", "scored", "split", "split_positions", "statistics", "to_dataset", "token_view", "tokenize_conversation",
]
