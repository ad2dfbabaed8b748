"""embedstore: extract CLIP-style embeddings once into a store, then analyse the cached vectors."""

import os as _os

#: embedstore never downloads: the hub libraries (huggingface_hub, transformers, datasets, and
#: open_clip and timm through huggingface_hub) read these switches once, when they are imported,
#: so they are forced here, before any import path of embedstore can import them.
OFFLINE_SWITCHES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
_os.environ.update(OFFLINE_SWITCHES)

__version__ = "0.1.0"

#: Version of the store layout and schema this code reads and writes. A store with another
#: version is refused, never migrated silently. Version 2: `labels.value` raw and `labels.positive`
#: derived (version 1 overwrote blank No Finding values with 1), and `datasets.checks`. Version 3:
#: `samples.patient`, `label_names.chexpert`, `datasets.options`, and `labels.positive` NULL for a pair
#: left out (`--uncertain ignore`). Version 4: `report_embeddings`, a zs run's embedding of each sample's
#: report. `embedstore store upgrade` brings a version-2 or version-3 store to it.
SCHEMA_VERSION = 4
