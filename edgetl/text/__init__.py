"""Text classification: tokenizer preprocessing (``preprocess``), BERT-family backbones (``backbones``) and
Optimum exports (``export``).

Importing this package is light: ``preprocess`` needs numpy and the ``tokenizers`` package only (the bundle's
predict path); ``backbones`` and ``export`` import torch, transformers and optimum inside their functions.
Install with ``pip install -c constraints.txt -e ".[text]"``.
"""
