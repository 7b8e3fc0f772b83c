"""Meta-testing on held-out tasks: Meta-World's protocol, direct per-goal figures, plots, videos."""
