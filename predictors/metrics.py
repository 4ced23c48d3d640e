"""How far to trust a predictor: error and rank-agreement metrics on held-out data."""

from __future__ import annotations

import numpy as np
from scipy import stats


def quality_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAPE and median APE (%), RMSE, Kendall tau, Spearman rho, and the share within +-5 % / +-10 %
    (nn-Meter's). The median APE is robust to near-zero targets (e.g. NB201 cells without convolutions),
    which can dominate the MAPE."""
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    rel = np.abs(y_pred - y_true) / np.maximum(np.abs(y_true), 1e-12)
    tau = stats.kendalltau(y_true, y_pred).statistic if len(y_true) > 1 else float("nan")
    rho = stats.spearmanr(y_true, y_pred).statistic if len(y_true) > 1 else float("nan")
    return {
        "n": int(len(y_true)),
        "mape": float(100 * rel.mean()),
        "median_ape": float(100 * np.median(rel)),
        "rmse": float(np.sqrt(np.mean((y_pred - y_true) ** 2))),
        "kendall_tau": float(tau),
        "spearman_rho": float(rho),
        "within_5pct": float(100 * np.mean(rel <= 0.05)),
        "within_10pct": float(100 * np.mean(rel <= 0.10)),
    }


def format_report(report: dict[str, float]) -> str:
    """One line: ``MAPE 3.1% | RMSE 0.42 | tau 0.91 | rho 0.98 | +-10%: 95% (n=40)``."""
    return (f"MAPE {report['mape']:.2f}% | RMSE {report['rmse']:.4g} | Kendall tau {report['kendall_tau']:.3f} | "
            f"Spearman rho {report['spearman_rho']:.3f} | within 5%: {report['within_5pct']:.0f}% | "
            f"within 10%: {report['within_10pct']:.0f}% (n={report['n']})")
