"""Training and evaluating backbone+MSCSA classifiers with timm's training parts.

    from mscsa_lab.train import TrainConfig, train, evaluate_trained
    result = train(TrainConfig(data="synthetic", backbone="resnet10t", img_size=96, epochs=2, out="runs/demo"))
    model, meta = mscsa_lab.io.checkpoints.load_trained("runs/demo")

Explaining a pretrained backbone without labels (its own classifier is the teacher):

    train(TrainConfig(data="photos/", mode="distill", backbone="resnet50", pretrained=True, out="runs/r50"))

Modules: ``config`` (TrainConfig, validation), ``data`` (folders / synthetic shapes / unlabelled
images, timm transforms, samplers), ``distributed`` (torchrun/DDP setup, BatchNorm averaging),
``parts`` (the run's data, model, loss, resume), ``engine`` (the loop), ``teacher`` and ``distill``
(distillation), ``state`` (resumable ``last/`` checkpoints), ``outputs`` (model.json, history.csv),
``evaluate`` (metrics, confusion matrix, files), ``progress`` (callbacks, stop flag, tqdm).
"""
from mscsa_lab.train.config import AMP_MODES, MODES, TrainConfig, TrainingInputError, backbone_input_size
from mscsa_lab.train.data import default_crop_scale, scan_images
from mscsa_lab.train.distill import AgreementResult, evaluate_distilled
from mscsa_lab.train.teacher import Teacher, imagenet_class_names, load_teacher, read_class_names
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
    "backbone_input_size",
    "default_crop_scale",
    "scan_images",
    "AgreementResult",
    "evaluate_distilled",
    "Teacher",
    "load_teacher",
    "read_class_names",
    "imagenet_class_names",
]
