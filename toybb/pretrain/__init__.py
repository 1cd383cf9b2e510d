"""Pretraining a language model of the one model (`toybb.models.transformer.Transformer`) from scratch on
real text, followed as it trains: `toybb pretrain`.

- `config.py`: `PretrainConfig` (data, optimiser, schedule of evaluations and checkpoints) and the model
  config built from `--model-set FIELD=VALUE`.
- `data.py`: documents from `toybb.texts`, a byte-level BPE tokenizer trained with `tokenizers`, the packed
  token stream, its held-out tail, and the batch of a step (a function of the step alone).
- `loop.py`: the compiled training segment (data parallel over every device), the emergence metrics of
  each evaluation into metrics.csv, the checkpoint series, resume.
- `runs.py`: pretrain run folders: reading one's run config back, checking one before a run (their format,
  and reading a checkpoint of the series back, are `toybb.llm.pretrain_folder`'s).
"""
