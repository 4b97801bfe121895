"""Is a change to DeGu a change in quality, or noise? Two runs of the experiment, image for image.

    python -m lab.experiment --phrase --split dev --no-sweep --seeds 0 1 2 3 4 5 6 7 8 9 10 11 --json base.json
    python -m lab.experiment ... --set threshold=0.5 --json new.json
    python -m lab.compare new.json base.json

Prints, per method x subject and for the mean, the new run's advantage minus the baseline's with a
paired bootstrap standard error (``lab.experiment.compare``). The runs must share split and seeds.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from lab.experiment import Row, compare


def load(path: Path) -> list[Row]:
    return [Row(**row) for row in json.loads(path.read_text())]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("new", type=Path, help="--json of the run to judge")
    parser.add_argument("baseline", type=Path, help="--json of the run to judge it against")
    parser.add_argument("--variant", default="attention", help="the variant whose advantage is compared")
    args = parser.parse_args(argv)
    print(f"advantage of {args.variant}: {args.new} minus {args.baseline} (paired bootstrap standard error)")
    for name, difference, error in compare(load(args.new), load(args.baseline), args.variant):
        print(f"{name:<16} {difference:+.3f} ± {error:.3f}")


if __name__ == "__main__":
    main()
