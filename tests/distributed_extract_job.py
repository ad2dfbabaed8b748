"""A torchrun job for tests/test_distributed.py: `embedstore extract …` as every rank runs it, with
two test-only interventions chosen by environment variables (never in embedstore itself):

- KILL_RANK=r KILL_AFTER_CHUNKS=k: rank r kills itself (SIGKILL) after staging k chunks;
- SEED_OF_RANK=r:s: rank r asks for seed s, so the ranks disagree on the run.
"""

from __future__ import annotations

import os
import signal
import sys

import embedstore.embeddings as embeddings
import embedstore.extract as extract

rank = int(os.environ.get("RANK", "0"))

if os.environ.get("KILL_RANK") == str(rank):
    limit, staged = int(os.environ["KILL_AFTER_CHUNKS"]), [0]
    original = embeddings.stage_image_embeddings

    def stage_then_die(*args, **kwargs):  # type: ignore[no-untyped-def]
        path = original(*args, **kwargs)
        staged[0] += 1
        if staged[0] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    extract.stage_image_embeddings = stage_then_die  # type: ignore[assignment]

if "SEED_OF_RANK" in os.environ:
    which, seed = os.environ["SEED_OF_RANK"].split(":")
    if which == str(rank):
        sys.argv += ["--seed", seed]

from embedstore.cli.app import main  # noqa: E402

sys.argv[0] = "embedstore"
main()
