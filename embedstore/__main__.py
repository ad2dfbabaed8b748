"""`python -m embedstore …`: the CLI, as torchrun starts it (`torchrun --nproc_per_node N -m embedstore extract …`)."""

from embedstore.cli.app import main

main()
