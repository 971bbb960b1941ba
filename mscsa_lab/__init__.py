"""MSCSA Lab: build, profile, benchmark and inspect Multi-Stage Cross-Scale Attention.

Importing the package registers the ``<backbone>_mscsa`` models with timm.
"""
from .config import ABLATION_PRESETS, ConfigError, MSCSAConfig
from .models import (
    MSCSA,
    BackboneError,
    MSCSANet,
    PretrainedWeightsUnavailable,
    create_mscsa_model,
)
from .profiles import Profile, ProfileError, ProfileUnavailable, list_profiles, load_profile

__version__ = "0.1.0"
