"""ImageNet-O (Hendrycks et al., CVPR 2021): photos of ImageNet-21k synsets outside ImageNet-1k that
a fixed classifier assigns to one of 200 ImageNet-1k classes with high confidence (top softmax
probability over those 200 logits >= a threshold); released by the class the model confuses them
with; scored as out-of-distribution detection (AUPR)."""

from curation.kinds import CLASSES_DIR, DatasetKind

KIND = DatasetKind(
    name="imagenet-o",
    title="ImageNet-O",
    recipe=CLASSES_DIR / "imagenet_o.csv",
    recipe_origin="imagenet_o",
    label_space="recipe",
    filter_rule="msp",
    keep_rule="confident",
    release_folder="prediction",
    release_name="imagenet-o-rebuilt",
    metrics="ood",
    review_question="does this show the source synset clearly, and none of the 1,000 ImageNet classes?",
    in_distribution_key=True,
    funnel_by="prediction",
    source_rule="ood-pool",
)
