"""Layer placement on the core grid: problem, solvers, baselines and validator."""
