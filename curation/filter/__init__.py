"""`curation filter`: the adversarial filter. A fixed classifier (default torchvision's ResNet-50,
timm ``resnet50.tv_in1k``) scores every downloaded (image, class) pair; pairs it gets wrong are kept.

The prediction is the argmax over the logits restricted to the run's class set (the authors'
200-way rule) or, with ``--rule top1``, over the whole label space. One ``Prediction`` row per pair
and model (+ weights hash + rule); one ``FilterVerdict`` per pair combining the models with
``--keep all-wrong|any-wrong``. Pairs already scored by the same model, weights and rule are skipped.

The catalog's dataset kind (`curation init --kind`) decides the label space and what is kept. An
ImageNet-O catalog scores its source classes (every class outside the 200 seeded targets) over the 200
target logits (rule ``msp``) and keeps a pair when the largest softmax probability (MSP) over them is
at least ``--min-confidence`` T; the prediction is the target the photo is confused with.

Modules: ``config`` (the ``[filter]`` table), ``cli`` (arguments), ``stage`` (the run), ``pending``
(which pairs), ``scoring`` (models over pages), ``judging`` (logits to rows), ``verdicts``, ``state``
(what a changed class set or threshold undoes). Importing this package never imports torch.
"""

from curation.filter.cli import register
from curation.filter.config import DEFAULT_MODEL, FilterOptions
from curation.filter.judging import MSP_RECHECK_BAND, judge, log_odds, msp_log_odds, msp_near_threshold

__all__ = [
    "DEFAULT_MODEL",
    "MSP_RECHECK_BAND",
    "FilterOptions",
    "judge",
    "log_odds",
    "msp_log_odds",
    "msp_near_threshold",
    "register",
]
