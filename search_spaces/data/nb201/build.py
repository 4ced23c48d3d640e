"""Rebuild ``nb201.npz`` and ``pareto.json`` here from the shared NB201 x HW-NAS-Bench files.

    .venv/bin/python search_spaces/data/nb201/build.py [SOURCE_DIR]

``SOURCE_DIR`` defaults to ``../shared/benchmarks/nb201_hw`` next to the repository root. The output
is byte-for-byte deterministic (fixed zip timestamps, fixed column order), so a rebuild can be
diffed against the committed files. Only the standard library and numpy are used.

What is written (see README.md here): ``ops`` (int8, 15,625 x 6 op indices in ``arch_str`` edge
order), ``columns`` (the numeric column names, in the CSV's order) and one float64 array per numeric
column, named as in the CSV, row ``i`` = architecture index ``i``, NaN where the CSV cell is empty.
Values are parsed with ``float()`` from the CSV text, so they are bit-identical to what ``csv`` /
``np.genfromtxt`` give on the shared file.
"""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2].parent / "shared" / "benchmarks" / "nb201_hw"
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
N_ARCHS = 15625
EDGE_INPUTS = (0, 0, 1, 0, 1, 2)     # input node of op0..op5 in arch_str order
DROPPED = ("index", "arch_str", "op0", "op1", "op2", "op3", "op4", "op5")   # implied by the row / by ``ops``


def arch_str(op_names: list[str]) -> str:
    """NB201's ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` string for six op names in edge order."""
    edge = [f"|{op}~{i}|" for op, i in zip(op_names, EDGE_INPUTS)]
    return "+".join([edge[0], edge[1] + edge[2][1:], edge[3] + edge[4][1:] + edge[5][1:]])


def read_rows(source: Path) -> tuple[list[str], list[list[str]]]:
    with gzip.open(source / "nb201_hw.csv.gz", "rt", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def convert(header: list[str], rows: list[list[str]]) -> dict[str, np.ndarray]:
    """The arrays to store, after checking the rows are indices 0..15624 with consistent op columns."""
    if len(rows) != N_ARCHS:
        raise SystemExit(f"expected {N_ARCHS} rows, got {len(rows)}")
    col = {name: i for i, name in enumerate(header)}
    if [int(r[col["index"]]) for r in rows] != list(range(N_ARCHS)):
        raise SystemExit("rows are not architecture indices 0..15624 in order")
    names = [[r[col[f"op{e}"]] for e in range(6)] for r in rows]
    for r, ops in zip(rows, names):
        if arch_str(ops) != r[col["arch_str"]]:
            raise SystemExit(f"row {r[0]}: op columns {ops} disagree with arch_str {r[col['arch_str']]}")
    ops = np.array([[OPS.index(op) for op in row] for row in names], dtype=np.int8)
    if len({bytes(row) for row in ops}) != N_ARCHS:
        raise SystemExit("op vectors are not all distinct")
    numeric = [name for name in header if name not in DROPPED]
    arrays: dict[str, np.ndarray] = {"ops": ops, "columns": np.array(numeric)}
    for name in numeric:
        arrays[name] = np.array([float(r[col[name]]) if r[col[name]] != "" else np.nan for r in rows])
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` layout (loadable by ``np.load``) with fixed timestamps: reproducible bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue(), compresslevel=9)


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else DEFAULT_SOURCE
    header, rows = read_rows(source)
    write_npz(HERE / "nb201.npz", convert(header, rows))
    shutil.copyfile(source / "pareto.json", HERE / "pareto.json")
    print(f"wrote {HERE / 'nb201.npz'} ({(HERE / 'nb201.npz').stat().st_size:,} bytes) and pareto.json")


if __name__ == "__main__":
    main(sys.argv[1:])
