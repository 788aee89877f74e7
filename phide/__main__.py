"""`python -m phide ...` (and `torchrun --nproc_per_node N -m phide distill ...`): the phide CLI."""

from phide.cli import main

raise SystemExit(main())
