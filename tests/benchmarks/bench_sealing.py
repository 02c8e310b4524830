"""What sealing artifact payloads costs: a payload of ``--mb`` megabytes written and read.

Usage:
    python tests/benchmarks/bench_sealing.py --mb 100

Times (best of ``--repeat``, process CPU time, so other jobs on a shared machine do not count):
the encryption and decryption of the payload alone (XSalsa20-Poly1305, the added cost), and the
whole write (``encode``: seal, hash, sign, pack) and the whole read (``parse_artifact`` with the
signature check, then ``open``), with the peak resident memory each adds. The payload is one
``points`` member, the form alignment steps take (blinded points, 32 bytes each). Prints a
markdown table and the load average, for docs/artifacts.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from vfl_cli.artifacts.container import encode, new_artifact, parse_artifact, points_member
from vfl_cli.crypto import sealing
from vfl_cli.crypto.signing import Signer


def _status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS: resident now; VmHWM: peak resident)."""
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, int, object]:
    """Best process CPU seconds of ``repeat`` runs, the most resident memory a run added (Linux:
    the peak is reset through /proc/self/clear_refs, so libsodium's buffers count too), and the
    last result."""
    best, peak, out = float("inf"), 0, None
    for _ in range(repeat):
        out = None
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current resident size
        before = _status("VmRSS")
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
        peak = max(peak, _status("VmHWM") - before)
    return best, peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100, help="payload size in MB (10^6 bytes)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = args.mb * 1_000_000 // 32
    points = np.random.default_rng().integers(0, 256, size=(rows, 32), dtype=np.uint8)
    bank, bureau = Signer.generate(), Signer.generate()
    art = new_artifact(kind="psi/start", job="bench", seq=1, step="start", sender="bank",
                       recipient="bureau", members=[points_member("points", points)])
    payload = art.members["points"].data
    key = sealing.new_content_key()
    rows_out = []
    t, peak, sealed = _best(lambda: sealing.encrypt(key, 0, payload), args.repeat)
    rows_out.append(("encrypt the payload (added cost)", t, peak))
    t, peak, _ = _best(lambda: sealing.decrypt(key, 0, sealed, what="bench"), args.repeat)  # type: ignore[arg-type]
    rows_out.append(("decrypt the payload (added cost)", t, peak))
    t, peak, data = _best(lambda: encode(art, bank, to=bureau.verifier), args.repeat)
    rows_out.append(("write: seal, hash, sign, pack (encode)", t, peak))

    def read() -> object:
        loaded = parse_artifact(data, name="bench.zip")  # type: ignore[arg-type]
        loaded.verify(bank.verifier, what="bench.zip")
        return loaded.open(bureau, "bureau")

    t, peak, _ = _best(read, args.repeat)
    rows_out.append(("read: parse, verify, open", t, peak))
    print(f"payload {len(payload) / 1e6:.1f} MB ({rows:,} points), file {len(data) / 1e6:.1f} MB, "  # type: ignore[arg-type]
          f"{platform.processor() or platform.machine()}, best of {args.repeat}, CPU seconds\n")
    print("| step | CPU seconds | MB/s | peak memory added (MB) |")
    print("|---|---:|---:|---:|")
    for name, secs, mem in rows_out:
        print(f"| {name} | {secs:.3f} | {len(payload) / 1e6 / secs:,.0f} | {mem / 1e6:,.0f} |")
    print(f"\nload average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
