"""The names of what runs (torch-free, so the CLI can list them without loading torch).

SCHEDULES: what `Engine.generate` runs (a Plan's schedule). MODES: what a user may ask for, the
schedules plus "auto" (the planner picks one)."""

SCHEDULES = ("target-only", "head-only", "sequential", "hide")
MODES = ("auto", *SCHEDULES)
