"""Render the Grafana dashboard's panels to a PNG from a real Prometheus's data.

Grafana is not needed: each panel's PromQL (deploy/grafana/cdp-pipeline.json) is asked of
Prometheus's HTTP API as a range query and drawn with matplotlib, two panels a row.

    .venv/bin/python scripts/dashboard_png.py --prometheus http://127.0.0.1:9090 \\
        --minutes 15 --out docs/images/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

DASHBOARD = Path(__file__).parents[1] / "deploy" / "grafana" / "cdp-pipeline.json"


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[Any]:
    """The matrix Prometheus returns for ``expr`` over [start, end]."""
    answer = httpx.get(
        f"{base}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    )
    answer.raise_for_status()
    result: list[Any] = answer.json()["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's ``{{label}}`` legend format."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def render(base: str, minutes: float, out: Path, title: str | None = None) -> int:
    """Draw every panel over the last ``minutes``; return how many series were drawn."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    end = float(int(time.time()))
    start = end - minutes * 60
    step = max(minutes * 60 / 240, 1.0)
    steps = [round(start + i * step, 3) for i in range(int((end - start) / step) + 1)]
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(16, 3.2 * rows), squeeze=False)
    drawn = 0
    for ax, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            for series in query_range(base, target["expr"], start, end, step):
                # Steps without a value stay gaps (NaN), not lines drawn across them.
                values = {round(float(t), 3): float(v) for t, v in series["values"]}
                if all(math.isnan(v) for v in values.values()):
                    continue
                ax.plot(
                    [datetime.fromtimestamp(t, UTC) for t in steps],
                    [values.get(t, math.nan) for t in steps],
                    label=legend(target["legendFormat"], series["metric"]),
                )
                drawn += 1
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.set_ylabel({"s": "seconds", "ops": "per second", "reqps": "per second"}.get(unit, ""))
        ax.set_xlim(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
        locator = mdates.AutoDateLocator(minticks=4, maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title or f"{dashboard['title']} (Prometheus {base}, last {minutes:g} min, UTC)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return drawn


def main() -> None:
    """Parse the arguments and render."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    drawn = render(args.prometheus, args.minutes, args.out, args.title)
    print(f"{args.out}: {drawn} series")


if __name__ == "__main__":
    main()
