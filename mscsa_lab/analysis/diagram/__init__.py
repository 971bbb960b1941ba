"""A block diagram of a built MSCSA model, drawn from the model itself (the Build tab's picture).

What is drawn, left to right: the input; the backbone's four stages (stride, channels, map size at this
input); the multi-stage aggregation (per stage how its map reaches the common grid, the optional squeeze
conv, the channel concat); the MSCSA blocks (per block its two CSA layers with heads, key/value dims,
query tokens, each key/value scale as grid = tokens, PCP and down-sampling, the Intra-FFN or the FFN that
replaces it, and the FFN); the output (classification head, Fig. 4; dense fusion, Fig. 5; or TopFormer's
injection and segmentation head, Table 3). Runs of identical blocks are drawn once beyond
``MAX_BLOCKS_DRAWN``.

``facts`` reads the numbers from the model and one observed forward pass, ``layout`` measures and places
the boxes (text is measured before anything is placed, so nothing is clipped), ``draw`` builds the figure
and writes SVG (text kept as text, searchable) or PNG.
"""
from mscsa_lab.analysis.diagram.draw import (DIAGRAM_FORMATS, MAX_BLOCKS_DRAWN, diagram_svg, figure_svg,
                                             model_diagram, save_diagram)
from mscsa_lab.analysis.diagram.facts import (AttentionFacts, BlockFacts, DiagramFacts, FFNFacts, OutputFacts,
                                              StageFacts, diagram_facts)

__all__ = [
    "model_diagram",
    "save_diagram",
    "diagram_svg",
    "figure_svg",
    "diagram_facts",
    "DiagramFacts",
    "StageFacts",
    "AttentionFacts",
    "FFNFacts",
    "BlockFacts",
    "OutputFacts",
    "DIAGRAM_FORMATS",
    "MAX_BLOCKS_DRAWN",
]
