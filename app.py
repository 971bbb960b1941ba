"""MSCSA Lab web app: the page is composed of one module per tab (``webapp/tabs``), each wiring its
components to ``mscsa_lab.workflows`` actions (the same functions the command line calls).

    python app.py                 # http://127.0.0.1:7860, this machine only
    python app.py --host 0.0.0.0  # reachable from other machines (prints a warning)
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import warnings

import gradio as gr

from webapp.context import DEFAULT_CACHE_BYTES, DEFAULT_CACHE_IDLE_S, DEFAULT_UPLOAD_CAP_BYTES, AppContext
from webapp.tabs import Shared, benchmark, build, compare, profile, saliency, train

# Checkpoints are the largest uploads (a 224x224 PVTv2-B1+MSCSA is 75 MB in fp32); images are further
# limited to 50 MB by mscsa_lab.io.images.
MAX_UPLOAD = "512mb"

# One notice at a time: Gradio stacks a message per error; only the newest is shown (the tab's status line
# keeps the message anyway).
CSS = """
.toast-wrap > .toast-body:not(:last-child) { display: none !important; }
.toast-messages > .toast-message-item:not(:last-child) { display: none !important; }
.toast-count { display: none !important; }
/* Table headers wrap between words, never inside one ("Batch", not "Ba/tc/h"). */
table th, table th * { word-break: keep-all !important; overflow-wrap: normal !important; hyphens: none !important;
                       white-space: normal !important; }
"""
LAUNCH_OPTIONS = dict(max_file_size=MAX_UPLOAD, css=CSS)
# The page's tabs, in order; each module's ``render`` builds one.
TABS = (("Build", build), ("Profile", profile), ("Benchmark", benchmark), ("Saliency", saliency), ("Train", train),
        ("Compare", compare))


def make_app(context: AppContext | None = None) -> gr.Blocks:
    context = context or AppContext()
    shared = Shared()
    # delete_cache: Gradio's copies of served files older than an hour are removed every hour.
    with gr.Blocks(title="MSCSA Lab", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# MSCSA Lab\nMulti-Stage Cross-Scale Attention on any backbone: build it, count its FLOPs, "
                    "time it, and see what each scale of its keys and values looks at.")
        for title, module in TABS:
            with gr.Tab(title, elem_id=f"tab-{title.lower()}"):
                module.render(context, shared)
        # Runs trained since the server started (or in another tab) appear after a reload.
        demo.load(lambda: gr.update(choices=saliency.model_sources(context)), None, [shared.saliency_source],
                  queue=False)
    return demo


LIMIT_FLAGS = {"max_side": "pixels per side of an input", "max_batch": "batch size",
               "max_steps": "forward passes per timed block", "max_repeats": "timed rounds",
               "max_models": "backbones per comparison or benchmark", "max_epochs": "training epochs",
               "max_train_steps": "training steps", "max_train_minutes": "minutes of one training run",
               "max_params": "parameters of one model",
               "max_fps_seconds": "seconds of FPS timing per model in a comparison",
               "memory_fraction": "share of the free memory one request may use"}


def main(argv: list[str] | None = None) -> None:
    defaults = AppContext.__dataclass_fields__["limits"].default
    parser = argparse.ArgumentParser(description="MSCSA Lab web app")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                                                           "only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public Gradio share link")
    parser.add_argument("--runs-dir", default=None, help="folder for training runs (default: $MSCSA_LAB_RUNS or ./runs)")
    for name, text in LIMIT_FLAGS.items():
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=f"limit on {text} (default: {default})")
    parser.add_argument("--uploads-mb", type=int, default=DEFAULT_UPLOAD_CAP_BYTES // 2**20,
                        help="all uploads together, in MiB (default: "
                             f"{DEFAULT_UPLOAD_CAP_BYTES // 2**20}); the oldest go first, and any older than an hour")
    parser.add_argument("--cache-mb", type=int, default=DEFAULT_CACHE_BYTES // 2**20,
                        help="memory the cache of built models may hold, in MiB (default: "
                             f"{DEFAULT_CACHE_BYTES // 2**20}); least recently used models go first")
    parser.add_argument("--cache-idle-s", type=float, default=DEFAULT_CACHE_IDLE_S,
                        help="seconds without a request after which the cached models are let go, so an idle app "
                             f"gives their memory back (default: {DEFAULT_CACHE_IDLE_S:g}; 0: keep them)")
    args = parser.parse_args(argv)
    from mscsa_lab.workflows.store import ModelStore

    limits = dataclasses.replace(defaults, **{name: getattr(args, name) for name in LIMIT_FLAGS}).validate()
    context = AppContext(limits=limits, store=ModelStore(args.cache_mb * 2**20),
                         upload_cap_bytes=args.uploads_mb * 2**20, cache_idle_s=max(0.0, args.cache_idle_s),
                         **({"runs_dir": args.runs_dir} if args.runs_dir else {}))
    if args.host not in ("127.0.0.1", "localhost", "::1") or args.share:
        warnings.warn(
            f"MSCSA Lab is listening beyond this machine (host={args.host}, share={args.share}): anyone who can reach "
            "it can run models on this computer.",
            stacklevel=1,
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    make_app(context).queue(default_concurrency_limit=2).launch(
        server_name=args.host, server_port=args.port, share=args.share, **LAUNCH_OPTIONS
    )


if __name__ == "__main__":
    main()
