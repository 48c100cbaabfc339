"""Local ``evaluate`` metric modules (``evaluate.load(<folder>)``); see :func:`mmib.metrics.load_metric`."""
