"""A sequence classifier that pools its backbone's token states (mean, max, first or last token) before a
linear head, as transformers' ...ForSequenceClassification classes cannot: BERT's reads the first token
through a pooler that sentence-transformers models never trained, while their embeddings (and so a
linear probe on them) are the mean over tokens. Any AutoModel with a last_hidden_state is a backbone
(BERT, RoBERTa, MiniLM, DeBERTa, ModernBERT, a decoder LM).

This file imports only torch and transformers: a saved folder carries it with an auto_map, so
`pipeline("text-classification", model=folder, trust_remote_code=True)` loads the model elsewhere.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "max", "cls", "last")


class PooledEncoderConfig(PretrainedConfig):
    model_type = "pooled_encoder"

    def __init__(self, backbone=None, pooling: str = "mean", classifier_dropout: float = 0.0, **kwargs):
        if isinstance(backbone, dict):
            backbone = AutoConfig.for_model(**backbone)
        self.backbone = backbone
        self.pooling = pooling
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    @property
    def num_hidden_layers(self) -> int:
        """The backbone's: what freeze counts its blocks by."""
        return self.backbone.num_hidden_layers


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """(rows, tokens, width) -> (rows, width) over each row's real tokens (mask 1), whichever side pads."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if how == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
    positions = torch.arange(hidden.shape[1], device=hidden.device) * attention_mask
    index = positions.argmax(1) if how == "last" else (attention_mask.cumsum(1) == 1).int().argmax(1)
    return hidden[torch.arange(len(hidden), device=hidden.device), index]


class PooledEncoderForSequenceClassification(PreTrainedModel):
    config_class = PooledEncoderConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: PooledEncoderConfig, backbone: nn.Module | None = None):
        super().__init__(config)
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone)
        if getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # BERT's first-token pooler: not read here, so not trained or saved
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.backbone.hidden_size, config.num_labels)
        self.post_init()

    @classmethod
    def from_backbone(cls, folder, config: PooledEncoderConfig, **kwargs):
        """The pre-trained backbone from `folder` (its own checkpoint layout, as AutoModel reads it; kwargs
        go to that from_pretrained) under a new pooled head."""
        backbone = AutoModel.from_pretrained(folder, config=config.backbone, **kwargs)
        model = cls(config, backbone)
        model.classifier.to(next(backbone.parameters()).device)  # a device_map (qlora) placed the backbone
        return model

    def _init_weights(self, module):
        if module is getattr(self, "classifier", None):
            std = getattr(self.config.backbone, "initializer_range", 0.02)
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**inputs).last_hidden_state
        logits = self.classifier(self.dropout(pool(hidden, attention_mask, self.config.pooling)))
        return SequenceClassifierOutput(loss=None if labels is None else self._loss(logits, labels), logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """As transformers' sequence classifiers compute it, by the config's problem type."""
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        if self.config.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels)


# In this process the auto classes know the model; save_pretrained copies this file next to the weights
# and writes the auto_map that trust_remote_code follows.
AutoConfig.register(PooledEncoderConfig.model_type, PooledEncoderConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PooledEncoderConfig, PooledEncoderForSequenceClassification,
                                            exist_ok=True)
PooledEncoderConfig.register_for_auto_class()
PooledEncoderForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
