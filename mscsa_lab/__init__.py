"""MSCSA Lab: build, profile, benchmark and inspect Multi-Stage Cross-Scale Attention.

Importing the package registers the ``<backbone>_mscsa`` models with timm. Layout: ``models``
(model code), ``presets`` (Table 7 profiles), ``registry`` (names -> models), ``analysis`` (FLOPs,
parameters, comparisons, budget), ``bench`` (throughput and latency), ``explain`` (saliency),
``io`` (images, checkpoints, tables, figures), ``data`` (datasets), ``cli``.
"""
from mscsa_lab.models import MSCSA, BackboneError, MSCSANet, PretrainedWeightsUnavailable
from mscsa_lab.models.config import ABLATION_PRESETS, ConfigError, MSCSAConfig
from mscsa_lab.presets import Profile, ProfileError, ProfileUnavailable, list_profiles, load_profile
from mscsa_lab.registry import create_mscsa_model

__version__ = "0.2.0"
