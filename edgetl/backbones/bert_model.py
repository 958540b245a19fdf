"""The text classifier: a BERT encoder, mean pooling over real tokens, dropout and a linear head.

This module imports torch and transformers at load time; everything else in edgetl imports it lazily.

Why not ``BertForSequenceClassification``: it classifies the [CLS] token through BERT's pooler
(dense + tanh), while all-MiniLM-L6-v2 was trained for mean pooling and ships no trained pooler for it.
Mean pooling keeps the frozen features that reach 92.9% on banking77 with a linear probe. The class
is a ``BertPreTrainedModel`` with ``model_type == "bert"`` and the standard inputs and ``logits`` output,
so Optimum's "text-classification" exporters (ONNX and OpenVINO) handle it as a BERT model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

ARCHITECTURE = "MeanPoolingBertClassifier"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Average of the token vectors where ``attention_mask`` is 1 (sentence-transformers' mean pooling)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class MeanPoolingBertClassifier(BertPreTrainedModel):
    """BERT + mean pooling + linear head; ``forward`` returns ``SequenceClassifierOutput(logits=...)``."""

    config_class = BertConfig

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        # sentence-transformers' all-MiniLM-L6-v2 pipeline L2-normalises after pooling; optional here (config.json).
        self.normalize = bool(getattr(config, "normalize_embeddings", False))
        self.post_init()

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled sentence embeddings (N, hidden), L2-normalised if the config says so: the probe's cached features."""
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        logits = self.classifier(self.dropout(self.embed(input_ids, attention_mask, token_type_ids)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
