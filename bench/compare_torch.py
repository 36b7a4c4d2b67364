"""cnnkit vs PyTorch CPU, side by side (see cnnkit.bench for the cases and method); the same as
`cnnkit bench`, with the same options (--help lists them), except that --via defaults to
`step fit`: cnnkit's training is timed both as the native step from a plain loop and through
the whole Trainer.fit path, each next to the same PyTorch training loop.

python bench/compare_torch.py --threads 1 2 --repeats 5 --json bench/results/compare_torch.json
"""

import sys

from cnnkit.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="compare_torch.py", via=("step", "fit")))
