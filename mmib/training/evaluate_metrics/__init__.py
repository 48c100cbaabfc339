"""Local ``evaluate`` metric modules (``evaluate.load(<folder>)``); see :func:`mmib.training.metrics.load_metric`."""
