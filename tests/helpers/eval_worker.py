"""One rank of `tests/test_trainer_fidelity.py::test_eval_metrics_on_two_processes_count_every_prompt_once`: evaluates
the tiny Llama on the rows in `rows.json` (per-device eval batch 2) and writes the metrics (rank 0) to `result.json`.

    python -m torch.distributed.run --nproc_per_node 2 tests/eval_worker.py rows.json result.json output_dir
"""

import json
import os
import sys

from datasets import Dataset

from trl_pro.assets import build_tiny_llama, load_tiny_tokenizer
from trl_pro.trainers.pro_config import PROConfig
from trl_pro.trainers.pro_trainer import PROTrainer


def top1_and_count(prediction):
    scores, ranks = prediction.predictions, prediction.label_ids
    others = [max(s for s, r in zip(row[1:], rank[1:]) if r >= 0) for row, rank in zip(scores, ranks)]
    return {
        "my_top1": float(sum(row[0] > best for row, best in zip(scores, others)) / len(scores)),
        "num_prompts": len(scores),
    }


def main(rows_path: str, result_path: str, output_dir: str) -> None:
    rows = json.loads(open(rows_path).read())
    args = PROConfig(
        output_dir=output_dir,
        per_device_eval_batch_size=2,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to=[],
        disable_tqdm=True,
        max_length=128,
        max_prompt_length=64,
    )
    trainer = PROTrainer(
        build_tiny_llama(seed=0),
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows),
        processing_class=load_tiny_tokenizer(),
        compute_metrics=top1_and_count,
    )
    metrics = trainer.evaluate()
    metrics["num_processes"] = trainer.accelerator.num_processes
    if trainer.is_world_process_zero():
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(metrics, f)
        os.replace(tmp, result_path)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:4])
