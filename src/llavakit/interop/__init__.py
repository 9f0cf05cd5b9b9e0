"""Checkpoint conversion, the one home of every layout llavakit reads or writes.

folders.py             `import_checkpoint` / `export_checkpoint`: whole folders (weights, tokenizer, processor)
transformers_llava.py  transformers' Llava <-> llavakit (configs, the key table, models)
transformers_next.py   transformers' LlavaNext / LlavaOnevision <-> llavakit
original_llava.py      original LLaVA folders (haotian-liu/LLaVA layout) -> llavakit
processor_export.py    a LlavaKitProcessor as transformers' processors
keys.py, loading.py    the shared machinery: key tables and renaming; strict loading without copies
"""
