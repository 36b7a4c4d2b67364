"""Coverage-guided fuzzing of one reader with atheris (libFuzzer for Python).

    python tests/fuzz/fuzz.py TARGET [CORPUS_DIR ...] [libFuzzer flags, e.g. -max_total_time=60]
    python tests/fuzz/fuzz.py TARGET --replay FILE_OR_DIR ...     # no atheris needed

TARGET is one of tests/fuzz/targets.py's TARGETS (load, checkpoint, idx, npy, image). An
exception the reader does not document, a crash or a hang (libFuzzer's -timeout) stops the
run with a non-zero exit and writes the input to crash-*/timeout-* (see -artifact_prefix).
tests/fuzz/run.sh runs a target for a bounded time with the seed corpus.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only add noise


#: The modules whose coverage guides each target (atheris instruments them as they are imported).
INSTRUMENT: dict[str, list[str]] = {
    "load": ["cnnkit"],
    "checkpoint": ["cnnkit"],
    "idx": ["cnnkit", "gzip"],
    "npy": ["cnnkit", "numpy.lib"],
    "image": ["cnnkit", "PIL"],
}


_CRC = re.compile(rb'"data_crc32":\s*-?[0-9]+')
_NBYTES = re.compile(rb'"data_nbytes":\s*-?[0-9]+')


def fix_lengths_and_crc(data: bytes) -> bytes:
    """Make a mutated cnnkit file consistent again where a mutation is only ever caught by
    the cheap checks: the header length field, `data_nbytes` and `data_crc32` are set to what
    the bytes hold. Half the mutants of the cnnkit targets get this, so mutations of the header
    and of the tensors reach the checks behind the CRC (architecture, weights, trainer state).
    """
    if len(data) < 16 or data[:8] != b"CNNKIT01":
        return data
    (hlen,) = struct.unpack("<Q", data[8:16])
    if hlen > len(data) - 16:
        return data
    header, rest = data[16 : 16 + hlen], data[16 + hlen :]
    header = _CRC.sub(b'"data_crc32":%d' % zlib.crc32(rest), header, count=1)
    header = _NBYTES.sub(b'"data_nbytes":%d' % len(rest), header, count=1)
    return data[:8] + struct.pack("<Q", len(header)) + header + rest


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    target = argv[1]
    if len(argv) > 2 and argv[2] == "--replay":
        import targets

        n = targets.replay(target, [Path(a) for a in argv[3:]])
        print(f"{target}: {n} inputs replayed, no finding")
        return 0

    import atheris

    # nothing of these is imported yet: importing them here instruments them
    with atheris.instrument_imports(include=INSTRUMENT[target] + ["targets"]):
        import targets

        if target == "image":  # Pillow imports its format plugins lazily: import them here
            from PIL import Image

            Image.init()
    fn = targets.TARGETS[target]
    if target in ("npy", "image"):  # building the parser is 60% of a run: build it once
        parser = targets.cli.build_parser()
        targets.cli.build_parser = lambda: parser
    import warnings

    warnings.simplefilter("ignore")  # warnings are not findings; exceptions are

    def one_input(data: bytes) -> None:
        fn(data)

    mutator = None
    if target in ("load", "checkpoint"):
        import random

        def mutator(data: bytes, max_size: int, seed: int) -> bytes:
            out = atheris.Mutate(data, max_size)
            if random.Random(seed).random() < 0.5:
                fixed = fix_lengths_and_crc(out)
                out = fixed if len(fixed) <= max_size else out
            return out

    atheris.Setup([argv[0]] + argv[2:], one_input, custom_mutator=mutator)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
