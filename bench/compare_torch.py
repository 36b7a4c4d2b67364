"""cnnkit vs PyTorch CPU, side by side (see cnnkit.bench for the cases and method).

python bench/compare_torch.py --threads 1 2 --repeats 5 --json bench/results/compare_torch.json
"""

from cnnkit.bench import main

if __name__ == "__main__":
    main()
