"""`hrm compare`: every arch x seed (x `--set` variant) as a DVC experiment on DVC's own queue, then mean, sd, min
and max per arch, each number traceable to its experiments (name and git rev): one run is not an answer, the quick
profile moves by several points with the seed or the machine. DVC is the state: a second call reuses finished
experiments, waits for queued or running ones (a Ctrl-C'ed call) and queues only what is missing or failed.

One job per module, imported one way (each imports only those above it):
  plan     the runs of a comparison, every one checked before anything is queued
  dvc      the DVC and git driver: the experiments DVC knows, its queue, a commit's files
  stats    one record per run from its experiment's files, mean/sd/min/max per (variant, arch)
  report   results.md and index.html (two renderings of one list of blocks) and the figures
  command  the command itself: plan, queue what is missing, wait, collect, write the report
"""
