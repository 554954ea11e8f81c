"""The one input pipeline and model loader shared by the filter and eval stages.

Preprocessing always comes from the model's timm data config. For the usual centre-crop config
JPEG files are decoded with Pillow's draft mode (DCT scaling, only while the decoded shorter side
stays at least ``DRAFT_FACTOR`` times the resize target); then the very Resize + CenterCrop of
timm's transform follow, so an image that draft mode leaves alone is bit-identical to timm's.
Other configs run timm's own eval transform. Workers hand uint8 crops to the main process,
which normalises whole batches; one DataLoader serves a whole run (``iter_logits`` yields it in
chunks). On a GPU, JPEG batches are instead decoded and resized on the device (see "GPU path"
below). Every image that was drafted, decoded on the device or run in reduced precision (bf16/fp16
autocast) and whose top-2 logit margin is below ``recheck_threshold`` is re-run with Pillow without
draft scaling in strict fp32 (no TF32), so argmax decisions equal those of timm's transform + fp32.
"""

from curation.inference.decode import (
    DRAFT_FACTOR,
    Preprocess,
    image_error,
    normalize_batch,
    resize_crop_tensor,
)
from curation.inference.logits import (
    MARGIN_RECHECK,
    MARGIN_RECHECK_RELATIVE,
    DecodedChunk,
    LogitsChunk,
    decode_chunk,
    default_batch_size,
    default_workers,
    forward_with_features,
    iter_logits,
    predict_logits,
    recheck_threshold,
    score_decoded,
    strict_fp32,
    top2_margin,
)
from curation.inference.models import (
    DEVICES,
    PRECISIONS,
    LoadedModel,
    LogitsResult,
    class_indices,
    hub_reachable,
    label_space,
    load_model,
    resolve_device,
    resolve_precision,
    state_dict_hash,
)

__all__ = [
    "DEVICES",
    "DRAFT_FACTOR",
    "MARGIN_RECHECK",
    "MARGIN_RECHECK_RELATIVE",
    "PRECISIONS",
    "DecodedChunk",
    "LoadedModel",
    "LogitsChunk",
    "LogitsResult",
    "Preprocess",
    "class_indices",
    "decode_chunk",
    "default_batch_size",
    "default_workers",
    "forward_with_features",
    "hub_reachable",
    "image_error",
    "iter_logits",
    "label_space",
    "load_model",
    "normalize_batch",
    "predict_logits",
    "recheck_threshold",
    "resize_crop_tensor",
    "resolve_device",
    "resolve_precision",
    "score_decoded",
    "state_dict_hash",
    "strict_fp32",
    "top2_margin",
]
