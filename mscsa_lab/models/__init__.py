"""Model code only: the MSCSA module (``mscsa``), its configuration (``config``), building blocks
(``layers``), timm backbone stages (``backbones``), backbone+MSCSA (``mscsa_net``), the fast
inference path (``fast``) and the paper's backbones timm lacks (``topformer``, ``p2t``, ``shunted``,
``coat``; importing this package registers them with timm). Presets and the ``*_mscsa`` timm names
live in ``mscsa_lab.registry``."""
from mscsa_lab.models import coat, p2t, shunted, topformer  # noqa: F401 - register the backbones timm lacks
from mscsa_lab.models.backbones import BackboneError, PretrainedWeightsUnavailable, StageFeatures
from mscsa_lab.models.config import ABLATION_PRESETS, ConfigError, MSCSAConfig
from mscsa_lab.models.layers import ConvBN, fuse_modules
from mscsa_lab.models.mscsa import (
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
from mscsa_lab.models.mscsa_net import MSCSANet
