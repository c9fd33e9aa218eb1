"""The trainer: data sampling, train step, checkpoints, logging and the run loop (see docs/design.md)."""
