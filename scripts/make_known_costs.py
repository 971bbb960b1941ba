"""Measure what every Table 7 profile as shipped costs and write ``assets/known_costs.json``.

    python scripts/make_known_costs.py                    # about a minute and a half on 2 cores
    python scripts/make_known_costs.py --check            # compare the table with a fresh measurement, write nothing
    python scripts/make_known_costs.py --check resnet18   # the same for some profiles

Each profile at 224x224 with 1000 classes (``analysis.known_costs.measure``): its memory cost for inference and
for a training step, costed on the meta device exactly as a request is; its per-component FLOPs and parameters,
counted by fvcore exactly as the Profile action counts them; and its backbone's alone, as the Compare action
counts it. The table records the torch, timm and fvcore versions and a fingerprint of the code that makes the
figures, and is used only under the same ones.
Run it again after changing a model file, a profile or the costing code, or upgrading torch, timm or fvcore;
``tests/test_known_costs.py`` fails until then.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from mscsa_lab.analysis.known_costs import TABLE_FILE, differences, measure, versions
    from mscsa_lab.presets import list_profiles

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", nargs="*", metavar="PROFILE", default=None,
                        help="compare the shipped table with a fresh measurement (all profiles, or these); exit 1 "
                             "when they differ")
    args = parser.parse_args(argv)
    if args.check is not None:
        found = differences(args.check or [p.name for p in list_profiles()])
        print("\n".join(found) if found else f"{TABLE_FILE} agrees with a fresh measurement")
        return 1 if found else 0
    table = {"versions": versions(), "costs": {}, "counts": {}, "baselines": {}}
    for profile in list_profiles():
        started = time.perf_counter()
        for section, entries in measure(profile.name).items():
            table[section].update(entries)
        print(f"{profile.name:16} {time.perf_counter() - started:5.2f} s", flush=True)
    TABLE_FILE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {TABLE_FILE} ({len(table['costs'])} costs, {len(table['counts'])} counts, "
          f"{len(table['baselines'])} backbones alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
