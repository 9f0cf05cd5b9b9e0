"""Checkpoint conversion, the one home of every layout llavakit reads or writes.

folders.py             `import_checkpoint` / `export_checkpoint`: whole folders (weights, tokenizer, processor)
transformers_llava.py  transformers' Llava <-> llavakit (configs, the key table, models)
transformers_next.py   transformers' LlavaNext / LlavaOnevision <-> llavakit
original_llava.py      original LLaVA and LLaVA-NeXT / OneVision folders (their `mm_*` config and weights) -> llavakit
original_next.py       the original LLaVA-NeXT / OneVision image and video settings as LlavaKitConfig fields
original_lora.py       LoRA output folders of the original trainer, merged into their base language model
template_choice.py     the conversation template an imported folder was trained with, and why
processor_export.py    a LlavaKitProcessor as transformers' processors
keys.py, loading.py    the shared machinery: key tables and renaming; strict loading without copies
"""
