"""cnnkit vs PyTorch CPU, side by side (see cnnkit.bench for the cases and method); the same as
`cnnkit bench`, with the same options (--help lists them).

python bench/compare_torch.py --threads 1 2 --repeats 5 --json bench/results/compare_torch.json
"""

import sys

from cnnkit.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="compare_torch.py"))
