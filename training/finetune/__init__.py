"""Fine-tuning transformers text models offline: token classification (NER) and sequence classification.

``python -m training.finetune ner|classify --data FILE --out DIR`` trains from a base model
(default: the packaged all-MiniLM-L6-v2), reports on a held-out test split and saves a
``save_pretrained`` folder with ``manifest.json`` and ``report.json``;
``python -m training.finetune evaluate --model DIR --data FILE`` re-runs the report.
``training.finetune.saving.load_finetuned`` loads such a folder without the training code.
"""
