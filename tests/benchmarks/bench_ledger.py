"""Cost of the ledger's durability: an fsynced append, with and without the signed checkpoint.

    python tests/benchmarks/bench_ledger.py [--appends 100] [--dir /tmp]

Run it on the disk the workspaces live on: fsync cost is the disk's, not Python's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vfl_cli.crypto.signing import Signer
from vfl_cli.ledger import Ledger


def per_append(ledger: Ledger, signer: Signer, n: int, *, checkpoint: bool) -> float:
    start = time.perf_counter()
    for i in range(n):
        ledger.append(signer, "sent", checkpoint=checkpoint, file=f"f{i}.zip", artifact_sha256="a" * 64,
                      job="bench", kind="bench/file", sender="a", recipient="b")
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=100)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    signer = Signer.generate()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ledger = Ledger(Path(tmp) / "ledger.jsonl")
        plain = per_append(ledger, signer, args.appends, checkpoint=False)
        signed = per_append(ledger, signer, args.appends, checkpoint=True)
    print(f"{args.appends} appends each: {plain * 1000:.1f} ms per fsynced append, "
          f"{signed * 1000:.1f} ms with the signed checkpoint after each")


if __name__ == "__main__":
    main()
