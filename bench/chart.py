"""The report's chart: throughput against the ceilings, latency against the targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def chart(sections: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here; the file is the product
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))

    bars: list[tuple[str, float]] = []
    for label, section, key in (
        ("consume+decode\n(ceiling)", "raw_decode", "events_per_s"),
        ("Redis writes\n(profiles/s)", "raw_redis", "profiles_per_s"),
        ("end to end\n1 worker", "end_to_end", "events_per_s"),
        ("end to end\n2 workers", "two_workers", "events_per_s"),
    ):
        if key in sections.get(section, {}):
            bars.append((label, sections[section][key]))
    left.bar([b[0] for b in bars], [b[1] for b in bars], color="#4878a8")
    left.axhline(20_000, color="#c44e52", linestyle="--", label="target 20,000 events/s")
    left.set_yscale("log")
    left.set_ylabel("per second (log)")
    left.set_title("Throughput")
    for i, (_, value) in enumerate(bars):
        left.annotate(f"{value:,.0f}", (i, value), ha="center", va="bottom", fontsize=9)
    left.legend(loc="upper right", fontsize=9)

    groups: list[tuple[str, dict[str, float]]] = []
    for name, title in (("load_sustained", "sustained"), ("load_target", "2,000/s")):
        load = sections.get(name)
        if load:
            groups.append((f"new profile\n{title}", load["new_profile"]))
            groups.append((f"merge\n{title}", load["merge"]))
    reads = sections.get("read_api", {}).get("open_loop")
    if reads:
        groups.append(("read API\n1,000/s", reads))
    width = 0.25
    for j, (pct, color) in enumerate((("p50_ms", "#55a868"), ("p95_ms", "#dd8452"),
                                      ("p99_ms", "#c44e52"))):  # fmt: skip
        xs = [i + (j - 1) * width for i in range(len(groups))]
        right.bar(xs, [max(g.get(pct, 0.0), 0.01) for _, g in groups], width,
                  label=pct.replace("_ms", ""), color=color)  # fmt: skip
    right.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("milliseconds (log)")
    right.set_title("Latency: produced → visible in Redis; API request → answer")
    for target, label in ((100, "visible p99 target"), (250, "merge p99 target"),
                          (5, "API p99 target")):  # fmt: skip
        right.axhline(target, color="grey", linestyle=":", linewidth=1)
        right.annotate(label, (len(groups) - 0.5, target), fontsize=7, color="grey",
                       ha="right", va="bottom")  # fmt: skip
    right.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
