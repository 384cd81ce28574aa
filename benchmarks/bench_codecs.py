"""How the cube's compression sets the ceiling of sampling: the bench_toolkit cube (184 x 270 x 270, chunks
(46, 90, 90), two float32 variables) written three ways (zarr v3 defaults = zstd level 0; no compression;
blosc lz4 with shuffle), each read with plain zarr (read + decompress every chunk) and with the toolkit into
torch batches, shuffled (training) and in cube order. Valid samples/s, median of --rounds.

    .venv/bin/python benchmarks/bench_codecs.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import xarray as xr
from bench_toolkit import make_cube, raw_zarr_rate, torch_rate
from zarr.codecs import BloscCodec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cube = make_cube()
    codecs = {
        "zstd level 0 (zarr v3 default)": None,
        "no compression": {v: {"compressors": None} for v in cube.data_vars},
        "blosc lz4 + shuffle": {
            v: {"compressors": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")} for v in cube.data_vars
        },
    }
    print("| codec | plain zarr read + decompress | toolkit -> torch, shuffled | ratio | toolkit -> torch, cube order "
          "| ratio |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, encoding) in enumerate(codecs.items()):
            url = str(Path(tmp) / f"cube-{i}.zarr")
            cube.to_zarr(url, mode="w", encoding=encoding)
            ds = xr.open_zarr(url)
            raw = statistics.median(raw_zarr_rate(url, None) for _ in range(args.rounds))
            shuffled = statistics.median(torch_rate(ds) for _ in range(args.rounds))
            in_order = statistics.median(torch_rate(ds, shuffle=False) for _ in range(args.rounds))
            print(f"| {name} | {raw / 1e6:.1f} M/s | {shuffled / 1e6:.1f} M/s | {shuffled / raw:.2f}x "
                  f"| {in_order / 1e6:.1f} M/s | {in_order / raw:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
