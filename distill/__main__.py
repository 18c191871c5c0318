"""`python -m distill ...`: the `distill` command, for an environment that has the package on its
path but not the console script (a checkout on `PYTHONPATH`, as `benchmarks/gpu.sh` runs)."""

from distill.launcher import main

main()
