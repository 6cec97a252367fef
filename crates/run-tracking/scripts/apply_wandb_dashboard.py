"""Applies a dashboard definition (docs/dashboards/phase7-wandb.json) to a W&B project
as a saved workspace view, with the `wandb-workspaces` library.

Panels name their metrics by regular expression; W&B panels take metric names, so the
expressions are expanded against the keys a run actually logged (its metrics.jsonl).

    pip install wandb wandb-workspaces
    python apply_wandb_dashboard.py docs/dashboards/phase7-wandb.json \\
        runs/default-seed0/tracking/pipeline --entity ENTITY --project phase7
    # --dry-run prints the expanded sections and panels as JSON, without W&B

Needs WANDB_API_KEY (or `wandb login`) unless --dry-run.
"""

import argparse
import json
import pathlib
import re
import sys


def logged_keys(run_dir: pathlib.Path) -> list:
    keys = set()
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                keys.update(json.loads(line)["metrics"].keys())
    return sorted(keys)


def expand(definition: dict, keys: list) -> list:
    sections = []
    for section in definition["sections"]:
        panels = []
        for panel in section["panels"]:
            pattern = re.compile(panel["metrics"])
            metrics = [k for k in keys if pattern.search(k)]
            panels.append({**panel, "metrics": metrics})
        sections.append({"name": section["name"], "panels": panels})
    return sections


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("definition", type=pathlib.Path)
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--entity")
    parser.add_argument("--project", default="phase7")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    definition = json.loads(args.definition.read_text(encoding="utf-8"))
    sections = expand(definition, logged_keys(args.run_dir))
    empty = [p["title"] for s in sections for p in s["panels"] if not p["metrics"]]
    if args.dry_run:
        json.dump({"sections": sections, "empty_panels": empty}, sys.stdout, indent=1)
        return
    if not args.entity:
        sys.exit("--entity is needed to save a workspace")
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def panel(p):
        if p["type"] == "line":
            return wr.LinePlot(title=p["title"], x="step", y=p["metrics"])
        if p["type"] == "scalar":
            return wr.ScalarChart(title=p["title"], metric=p["metrics"][0])
        return wr.BarPlot(title=p["title"], metrics=p["metrics"])

    workspace = ws.Workspace(
        name=definition["name"],
        entity=args.entity,
        project=args.project,
        sections=[
            ws.Section(name=s["name"], panels=[panel(p) for p in s["panels"] if p["metrics"]], is_open=True)
            for s in sections
        ],
    )
    workspace.save()
    print(f"saved workspace `{definition['name']}` in {args.entity}/{args.project}; empty panels left out: {empty}")


if __name__ == "__main__":
    main()
