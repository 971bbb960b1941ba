"""MSCSA Lab web app. Only wiring lives here: every computation is a ``mscsa_lab`` function.

    python app.py                 # http://127.0.0.1:7860
    python app.py --host 0.0.0.0  # reachable from other machines (prints a warning)
"""
from __future__ import annotations

import argparse
import warnings

import gradio as gr

from mscsa_lab.architecture import architecture_tables, build_model
from mscsa_lab.config import DOWNSAMPLE_STRATEGIES
from mscsa_lab.profiles import list_profiles

USER_ERRORS = (ValueError, RuntimeError, KeyError, TypeError)


def _profile_choices() -> list[tuple[str, str]]:
    return [(p.title + ("" if p.available else " (not available yet)"), p.name) for p in list_profiles()]


def build_tab_action(profile, backbone, task, height, width, depth, num_heads, key_dim, mlp_ratio, squeeze,
                     use_pcp, use_intra_ffn, use_msp, downsample):
    settings = dict(use_pcp=use_pcp, use_intra_ffn=use_intra_ffn, use_msp=use_msp, downsample=downsample)
    for name, value in (("depth", depth), ("num_heads", num_heads), ("key_dim", key_dim)):
        if value not in (None, 0, ""):
            settings[name] = int(value)
    if mlp_ratio not in (None, 0, ""):
        settings["mlp_ratio"] = float(mlp_ratio)
    if squeeze and squeeze.strip():
        settings["squeeze_ratio"] = squeeze.strip()
    try:
        model = build_model(None if backbone.strip() else profile, backbone, task, (height, width), **settings)
        tables = architecture_tables(model, (height, width))
    except USER_ERRORS as error:
        raise gr.Error(str(error)) from None
    summary = tables["summary"]
    text = (
        f"**{summary['backbone']} + MSCSA** ({summary['task']}), input {height}x{width}: "
        f"multi-stage map {summary['mscsa_dim']} channels on a "
        f"{'x'.join(map(str, summary['mscsa_grid']))} grid, {sum(summary['tokens_per_scale'])} key/value tokens."
    )
    return text, tables["stages"], tables["scales"], tables["params"]


def make_app() -> gr.Blocks:
    with gr.Blocks(title="MSCSA Lab") as demo:
        gr.Markdown("# MSCSA Lab\nMulti-Stage Cross-Scale Attention on any backbone: build, profile, inspect.")
        with gr.Tab("Build"):
            with gr.Row():
                profile = gr.Dropdown(_profile_choices(), value="pvt_v2_b1", label="Table 7 profile")
                backbone = gr.Textbox(label="or any timm backbone (overrides the profile)", placeholder="e.g. efficientnet_b0")
                task = gr.Radio(["classification", "dense"], value="classification", label="Task")
            with gr.Row():
                height = gr.Number(224, label="Input height", precision=0)
                width = gr.Number(224, label="Input width", precision=0)
                depth = gr.Number(None, label="Depth (blank = profile)", precision=0)
                num_heads = gr.Number(None, label="Heads (blank = profile)", precision=0)
                key_dim = gr.Number(None, label="Head dim d (blank = profile)", precision=0)
                mlp_ratio = gr.Number(None, label="MLP ratio (blank = profile)")
                squeeze = gr.Textbox(label="Squeeze ratio (e.g. 5/8, none; blank = profile)")
            with gr.Row():
                use_pcp = gr.Checkbox(True, label="Parallel convolution path")
                use_intra_ffn = gr.Checkbox(True, label="Intra-FFN")
                use_msp = gr.Checkbox(True, label="Multi-scale K/V (MSP)")
                downsample = gr.Dropdown(list(DOWNSAMPLE_STRATEGIES), value="dwconv", label="MSP down-sampling")
            build = gr.Button("Build", variant="primary")
            status = gr.Markdown()
            with gr.Row():
                stages = gr.Dataframe(label="Stages")
                scales = gr.Dataframe(label="Key/value scales")
                params = gr.Dataframe(label="Parameters")
            build.click(
                build_tab_action,
                [profile, backbone, task, height, width, depth, num_heads, key_dim, mlp_ratio, squeeze,
                 use_pcp, use_intra_ffn, use_msp, downsample],
                [status, stages, scales, params],
                api_name="build",
            )
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MSCSA Lab web app")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public Gradio share link")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1") or args.share:
        warnings.warn(
            f"MSCSA Lab is listening beyond this machine (host={args.host}, share={args.share}): anyone who can reach "
            "it can run models on this computer.",
            stacklevel=1,
        )
    make_app().queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size="20mb"
    )


if __name__ == "__main__":
    main()
