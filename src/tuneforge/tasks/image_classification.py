"""image_classification: a label for an image, learnt by a new head on a pre-trained image model (any
`AutoModelForImageClassification`: EfficientNet-Lite0 bundled, ViT, ConvNeXt, ... with its image
processor). Labels work as for text classification (names, sorted; multi-label lists); splits are
stratified by label; training images are augmented (tasks/image_inputs.py)."""

from tuneforge.tasks.base import register
from tuneforge.tasks.classification import Classification
from tuneforge.tasks.image_inputs import ImageExample, pixel_values
from tuneforge.tasks.labelled import NO_PROMPT, SINGLE


@register
class ImageClassification(Classification):
    name = "image_classification"
    row_kinds = ("image",)
    images = True
    default_model = "efficientnet-lite0"
    default_method = "full"  # 4.7 M parameters: every weight learns in minutes, and LoRA has no linear layers to adapt
    model_class = "AutoModelForImageClassification"
    # a small convolutional model on a new domain moves far from ImageNet: full's 3e-5 reached 0.36 accuracy
    # on 2,400 Fashion-MNIST images in 3 epochs, 3e-4 0.78, 1e-3 0.87 (3e-3 not measured; docs/image-classification.md)
    learning_rates = {"full": 1e-3, "freeze": 1e-3}
    unit = "img"
    refused_methods = {"prompt_tuning": NO_PROMPT, "gradual_unfreeze": "it unfreezes transformer blocks one by one; "
                       "use freeze (with freeze.frozen_modules) or full for an image model."}

    def encode(self, example: dict, processor, max_length: int, train_on_prompt: bool = False, classes=None):
        return ImageExample(example["id"], example["image"], self.target(example, classes))

    def token_lengths(self, examples: list[dict], processor) -> list[int]:
        return [1] * len(examples)  # one image, one target

    def collator(self, processor, problem: str, recipe=None):
        import torch

        image = recipe.data.image if recipe is not None else None
        augmentation = (image.crop_scale, image.flip) if image is not None and image.augment else None
        dtype = torch.long if problem == SINGLE else torch.float32

        def collate(rows: list[ImageExample], training: bool = False) -> dict:
            pixels = pixel_values(processor, [r.path for r in rows], augmentation if training else None)
            return {"pixel_values": pixels, "labels": torch.tensor([r.target for r in rows], dtype=dtype)}

        return collate

    def head_modules(self, model) -> list[str]:
        names = {name for name, _ in model.named_children()}
        return sorted(names & {"classifier", "head", "fc"})
