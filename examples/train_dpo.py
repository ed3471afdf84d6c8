"""Train a few DPO steps on a `cai export` with TRL, on CPU.

    pip install 'cai[train]'
    cai export outputs/<run> --format hf          # or --format dpo
    python examples/train_dpo.py outputs/<run>/hf --steps 2
    python examples/train_dpo.py outputs/<run>/hf --model HuggingFaceTB/SmolLM2-135M-Instruct

It proves the export drops straight into TRL: `datasets` loads it, `DPOTrainer` trains on it.
Without --model it needs no download: a tiny Llama is built from a config, with a byte-level
BPE tokenizer trained on the export's own text, so the steps take seconds and say nothing of
quality, only that the rows train. With --model, any causal LM transformers can load (a Hub
id or a local folder) is trained instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The tiny model's chat template: prompt + answer renders as prompt-with-generation-prompt
# followed by the answer, the prefix property TRL relies on to split prompt from completion.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS.append("<|end|>")


def load_preferences(path: str | Path, split: str = "train_prefs") -> Any:
    """The preference rows of an export: an `hf` directory (its `split`) or a `dpo` JSONL file."""
    import datasets

    path = Path(path)
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))[split]
    if path.is_file() and path.suffix == ".jsonl":
        return datasets.load_dataset("json", data_files=str(path), split="train")
    raise SystemExit(f"{path}: not a cai export; pass an --format hf directory or a dpo .jsonl")


def _texts(data: Any) -> Iterator[str]:
    """Every text of the rows, conversational (message lists) or standard (strings)."""
    for row in data:
        for column in ("prompt", "chosen", "rejected"):
            value = row.get(column)
            if isinstance(value, str):
                yield value
            elif value:
                yield from (message["content"] for message in value)


def tiny_tokenizer(data: Any, vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained on the rows' text: any text encodes, none is unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(data), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(tokenizer: Any, max_length: int, seed: int = 0) -> Any:
    """A two-layer Llama with random weights, sized for the tokenizer and --max-length."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max(max_length, 128),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_model(name: str) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from the Hub or a local folder, in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32), tokenizer


def train(
    data: Any,
    *,
    steps: int,
    batch_size: int,
    max_length: int,
    output_dir: str,
    model_name: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run `steps` DPO steps on `data`; returns the losses logged and the steps run."""
    from trl import DPOConfig, DPOTrainer

    if model_name is None:
        tokenizer = tiny_tokenizer(data)
        model = tiny_model(tokenizer, max_length, seed)
    else:
        model, tokenizer = load_model(model_name)
    config = DPOConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=5e-6 if model_name else 1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        max_length=max_length,
        seed=seed,
    )
    trainer = DPOTrainer(
        model=model,
        # The reference is the policy as it starts: a frozen copy of the same weights.
        ref_model=copy.deepcopy(model),
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
    )
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "rows": data.num_rows,
        "model": model_name or "tiny",
        "steps": trainer.state.global_step,
        "losses": losses,
        "train_loss": result.training_loss,
        "seconds": round(result.metrics.get("train_runtime", 0.0), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="an `hf` export directory or a `dpo` .jsonl file")
    parser.add_argument("--split", default="train_prefs", help="split of an hf export")
    parser.add_argument(
        "--model",
        default=None,
        help="a causal LM to train (Hub id or folder; default: a tiny one built offline)",
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256, help="tokens of prompt + answer")
    parser.add_argument("--output-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    data = load_preferences(args.export, args.split)
    if data.num_rows == 0:
        print(f"{args.export}: no preference rows to train on", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            data,
            steps=args.steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
            output_dir=args.output_dir or tmp,
            model_name=args.model,
        )
    if args.json:
        print(json.dumps(result))
    else:
        losses = ", ".join(f"{x:.4f}" for x in result["losses"])
        print(
            f"Trained {result['steps']} DPO steps of the {result['model']} model on "
            f"{result['rows']} rows in {result['seconds']}s; loss per step: {losses}"
        )
    finite = result["losses"] and all(math.isfinite(x) for x in result["losses"])
    return 0 if finite and result["steps"] == args.steps else 1


if __name__ == "__main__":
    sys.exit(main())
