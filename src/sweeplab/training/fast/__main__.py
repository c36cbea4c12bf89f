"""python -m sweeplab.training.fast: build the C++ training loop now (`make install` does)."""

import sys

from sweeplab.training.fast import native

for module in (native.load(), native.load_stack()):
    if module is None:
        sys.exit("sweeplab: a C++ loop was not built (see the warning above); training uses Python")
    print(f"sweeplab: C++ training loop {module.__file__}")
