"""Training and evaluating backbone+MSCSA classifiers with timm's training parts.

    from mscsa_lab.train import TrainConfig, train, evaluate_trained
    result = train(TrainConfig(data="synthetic", backbone="resnet10t", img_size=96, epochs=2, out="runs/demo"))
    model, meta = mscsa_lab.io.checkpoints.load_trained("runs/demo")

Modules: ``config`` (TrainConfig, validation), ``data`` (folders / synthetic shapes, timm
transforms, samplers), ``distributed`` (torchrun/DDP setup), ``engine`` (the loop), ``state``
(resumable ``last/`` checkpoints), ``evaluate`` (metrics, confusion matrix, files), ``progress``
(callbacks, stop flag, tqdm).
"""
from mscsa_lab.train.config import AMP_MODES, MODES, TrainConfig, TrainingInputError
from mscsa_lab.train.engine import TrainingDivergedError, TrainResult, train
from mscsa_lab.train.evaluate import EvalResult, evaluate_model, evaluate_trained, plot_confusion, write_evaluation
from mscsa_lab.train.progress import PrintProgress, ProgressEvent, TqdmProgress

__all__ = [
    "TrainConfig",
    "TrainingInputError",
    "MODES",
    "AMP_MODES",
    "train",
    "TrainResult",
    "TrainingDivergedError",
    "EvalResult",
    "evaluate_model",
    "evaluate_trained",
    "plot_confusion",
    "write_evaluation",
    "ProgressEvent",
    "TqdmProgress",
    "PrintProgress",
]
