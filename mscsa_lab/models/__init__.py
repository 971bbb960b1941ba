"""MSCSA model code: the module (``mscsa``), timm backbone stages (``backbones``) and the
registered backbone+MSCSA models (``mscsa_net``). Importing this package registers the models
with timm, so ``timm.create_model("pvt_v2_b1_mscsa")`` works after ``import mscsa_lab``."""
from . import coat, p2t, shunted, topformer  # noqa: F401 - register the backbones timm lacks
from .backbones import BackboneError, PretrainedWeightsUnavailable, StageFeatures, find_local_weights
from .layers import ConvBN, fuse_modules
from .mscsa import (
    MSCSA,
    ClassificationHead,
    CrossScaleAttention,
    DenseFusion,
    FFN,
    IntraFFN,
    MSCSABlock,
    MultiStageAggregation,
    scale_sizes,
)
from .mscsa_net import MSCSANet, create_mscsa_model
