"""Route-aware evaluation of an HRM checkpoint: metrics, DVC plot data, figures and an offline HTML report.

Entry point: `run_evaluation(params)` in `hrm.evaluation.runner` (the `evaluate` DVC stage).
"""
