"""Measure what every Table 7 profile as shipped costs and write ``assets/known_costs.json``.

    python scripts/make_known_costs.py            # about a minute on 2 cores

Each profile at 224x224 with 1000 classes: its memory cost for inference and for a training step, costed
on the meta device exactly as a request is (``analysis.cost.unit_cost``), and its per-component FLOPs and
parameters, counted by fvcore exactly as the Profile action counts them (``analysis.profiler.profile_model``).
The table records the torch, timm and fvcore versions and is used only under the same ones
(``analysis.known_costs``). Run it again after changing a model file or upgrading torch, timm or fvcore;
``tests/test_known_costs.py`` fails when the table is stale.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZE = (224, 224)


def main() -> None:
    from mscsa_lab.analysis.cost import unit_cost
    from mscsa_lab.analysis.known_costs import TABLE_FILE, cost_key, count_entry, table_entry, versions
    from mscsa_lab.analysis.profiler import profile_model
    from mscsa_lab.presets import list_profiles
    from mscsa_lab.workflows.spec import ModelSpec

    costs, counts = {}, {}
    for profile in list_profiles():
        spec = ModelSpec.resolve(profile.name, input_size=SIZE)
        for training in (False, True):
            started = time.perf_counter()
            unit = unit_cost(spec.meta(), label=spec.label, input_size=spec.input_size, training=training)
            costs[cost_key(profile.name, spec.task, spec.input_size, spec.num_classes, training)] = table_entry(unit)
            print(f"{profile.name:16} {'training' if training else 'inference':9} {time.perf_counter() - started:5.2f} s",
                  flush=True)
        started = time.perf_counter()
        report = profile_model(spec.build(), spec.input_size)
        counts[cost_key(profile.name, spec.task, spec.input_size, spec.num_classes, False)] = count_entry(report)
        print(f"{profile.name:16} FLOPs     {time.perf_counter() - started:5.2f} s", flush=True)
    TABLE_FILE.write_text(json.dumps({"versions": versions(), "costs": costs, "counts": counts}, indent=1,
                                     sort_keys=True) + "\n")
    print(f"wrote {TABLE_FILE} ({len(costs)} costs, {len(counts)} counts)")


if __name__ == "__main__":
    main()
