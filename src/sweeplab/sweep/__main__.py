"""python -m sweeplab.sweep: see `sweeplab.sweep.cli`."""

from sweeplab.sweep.cli import main

main()
