"""Route-aware evaluation of an HRM checkpoint (the `evaluate` stage: `runner.run_evaluation(params)`): metrics,
DVC plot data, figures and an offline HTML report."""
