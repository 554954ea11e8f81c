"""ImageNet-A (Hendrycks et al., CVPR 2021): photos of 200 ImageNet-1k classes that a fixed
classifier gets wrong, with the argmax restricted to those classes; released by crawled class."""

from curation.kinds import CLASSES_DIR, DatasetKind

KIND = DatasetKind(
    name="imagenet-a",
    title="ImageNet-A",
    recipe=CLASSES_DIR / "imagenet_a.csv",
    recipe_origin="imagenet_a",
    label_space="catalog",
    filter_rule="restricted",
    keep_rule="misclassified",
    release_folder="class",
    release_name="imagenet-a-rebuilt",
    metrics="adversarial",
    review_question="is this a clear, single-object photo of",
    in_distribution_key=False,
    funnel_by="class",
    source_rule="any",
)
