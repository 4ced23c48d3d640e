"""Reading a run for reports: every evaluation in order, the archive, and the Pareto plot.

``nas report RUN --json`` prints ``load_report(RUN)``: an object with ``run``, ``config`` (the stored
search configuration), ``evaluations`` (every result in order: ``n``, ``config``, ``vector`` (canonical
encoding), ``values`` {objective or constraint name: value or null}, ``status`` ok|failed, ``error``,
``seconds``) and ``archive`` (``objectives``, ``constraints``, ``front`` (evaluation numbers of the
feasible Pareto front, sorted by the first objective), ``best`` (number of the best feasible subnet for
the first objective), ``evaluations``, ``failed``, ``feasible``, ``hypervolume``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nas.runs import RunStore


def load_report(run: str | Path) -> dict[str, Any]:
    from nas.search import Search

    store = RunStore.open(run, write=False)
    search = Search(store.config, store)
    results = store.results()
    canonical = search.space.canonical(np.array([e["vector"] for e in results], dtype=np.int64).reshape(
        len(results), search.space.n_genes))
    evaluations = [{k: e[k] for k in ("n", "config", "values", "status", "error", "seconds")} | {"vector": c.tolist()}
                   for e, c in zip(results, canonical)]
    return {"run": str(run), "config": store.config, "evaluations": evaluations, "archive": search.archive()}


def write_plot(data: dict[str, Any], path: str | Path) -> None:
    """Scatter of every evaluation on the first two objectives, the Pareto front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = data["archive"]["objectives"]
    ok = [e for e in data["evaluations"] if e["status"] == "ok"]
    x_name, y_name = (names[1], names[0]) if len(names) > 1 else ("n", names[0])
    value = lambda e, k: e["n"] if k == "n" else e["values"].get(k)  # noqa: E731
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([value(e, x_name) for e in ok], [value(e, y_name) for e in ok], s=12, c="0.7", label="evaluated")
    front = {n for n in data["archive"]["front"]}
    pts = sorted((value(e, x_name), value(e, y_name)) for e in ok if e["n"] in front)
    if pts:
        ax.plot(*zip(*pts), "o-", c="tab:red", ms=4, label="Pareto front (feasible)")
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(f"{data['config']['space']}: {data['config']['searcher']}, {len(data['evaluations'])} evaluations")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
