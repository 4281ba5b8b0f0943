"""Run the scenarios (or read their finished runs) and write the results tables, docs/results.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs import cli
from pipeline.config import data_overrides


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.results", description=__doc__)
    parser.add_argument("--scenarios", nargs="*", default=None,
                        help="scenario YAMLs (default: configs/scenarios/*.yaml)")
    parser.add_argument("--data", default=None,
                        help="run the scenarios on your own images (ImageFolder or idx .gz folder)")
    parser.add_argument("--output-root", default=None, help="where each scenario's run goes (default: outputs/results)")
    parser.add_argument("--out", default=None, help="the Markdown file (default: docs/results.md)")
    parser.add_argument("--reuse", action="store_true",
                        help="read a scenario's finished run instead of running it again")
    parser.add_argument("--run", nargs="*", default=None, metavar="NAME",
                        help="run only these scenarios (by file stem, e.g. classes); the tables take every other "
                             "scenario from its finished run and leave out those not run yet")
    cli.add_ray_arg(parser)
    args = parser.parse_args()
    from pipeline.flows.scenarios import plan, run_scenario, write_results

    paths = [Path(p) for p in args.scenarios] if args.scenarios else sorted(Path("configs/scenarios").glob("*.yaml"))
    if not paths:
        raise FileNotFoundError("no scenario configs given and none in configs/scenarios")
    overrides = data_overrides(args.data) if args.data else {}
    root = Path(args.output_root or (f"{overrides['output_dir']}/results" if args.data else "outputs/results"))
    out = Path(args.out or (root / "results.md" if args.data else "docs/results.md"))
    scenarios = []
    for path, reuse in plan(paths, root, args.run, args.reuse):
        scenarios.append(run_scenario(path, overrides, root, reuse, args.ray_address))
        holding = sum(ok for _, ok in scenarios[-1].checks)
        print(f"{path.stem}: {holding}/{len(scenarios[-1].checks)} claims hold "
              f"({scenarios[-1].run['seconds'] / 60:.1f} min)")
    source = overrides.get("data", {}).get("source", "configs default")
    csv_path = write_results(scenarios, out, source)
    print(f"results: {out} and {csv_path}; all scenarios {sum(s.run['seconds'] for s in scenarios) / 60:.1f} min")


if __name__ == "__main__":
    cli.run_main(main)
