"""Text classification (``model.kind = "text"``): tokenizer preprocessing (``preprocess``), BERT-family backbones
(``backbones``), length-bucketed batches (``batching``), fine-tuning (``finetune``), distillation (``distill``),
Optimum exports and the shape contract (``export``) and the whole run (``pipeline.run_text``).

Importing this package is light: ``preprocess`` needs numpy and the ``tokenizers`` package only (the bundle's
predict path); ``backbones`` and ``export`` import torch, transformers and optimum inside their functions, and
``finetune``, ``distill`` and ``pipeline`` import torch when they are imported.
Install with ``pip install -c constraints.txt -e ".[text]"``.
"""
