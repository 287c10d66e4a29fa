"""`ListDPOTrainer`: DPO on rankings, with a reference model (Plackett-Luce list DPO, LiPO-λ, all pairs)."""

import contextlib
import copy
import textwrap
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from trl.models.utils import disable_gradient_checkpointing, prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import disable_dropout_in_model, hash_module, use_adapter

from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core.head import add_ranking_loss_head
from trl_pro.objectives.list_dpo import LOSS_TYPES, ListDPOObjective
from trl_pro.objectives.pro import PROObjective
from trl_pro.trainers.list_dpo_config import ListDPOConfig
from trl_pro.trainers.ranking_trainer import RankingTrainer
from trl_pro.utils.cache import KeyedCache
from trl_pro.utils.io import read_jsonl_cache


logger = get_logger(__name__)

# The reference pass reads only the candidates' summed log-probs; any objective without a reference computes them
_REFERENCE_PASS = PROObjective()

_DPO_PAPER = {
    "title": "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    "id": "2305.18290",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @inproceedings{rafailov2023direct,
            title        = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},
            author       = {Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and Stefano Ermon and Chelsea Finn},
            year         = 2023,
            booktitle    = {Advances in Neural Information Processing Systems 36: Annual Conference on Neural Information Processing Systems 2023, NeurIPS 2023},
        }"""),
}
_LIPO_PAPER = {
    "title": "LiPO: Listwise Preference Optimization through Learning-to-Rank",
    "id": "2402.01878",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @article{liu2024lipo,
            title        = {{LiPO: Listwise Preference Optimization through Learning-to-Rank}},
            author       = {Tianqi Liu and Zhen Qin and Junru Wu and Jiaming Shen and Misha Khalman and Rishabh Joshi and Yao Zhao and Mohammad Saleh and Simon Baumgartner and Jialu Liu and Peter J. Liu and Xuanhui Wang},
            year         = 2024,
            journal      = {arXiv preprint arXiv:2402.01878},
        }"""),
}


class ListDPOTrainer(RankingTrainer):
    """
    Trainer for DPO on rankings of any length, with a reference model: list DPO under the Plackett-Luce model
    ([Direct Preference Optimization](https://huggingface.co/papers/2305.18290), Appendix A.3), LiPO-λ ([LiPO:
    Listwise Preference Optimization through Learning-to-Rank](https://huggingface.co/papers/2402.01878)) or DPO's
    sigmoid loss over all pairs (`loss_type`). Each candidate is scored by s_i = β (log π(y_i|x) - log π_ref(y_i|x)),
    the summed token log-prob ratio as in DPO; for two candidates `"plackett_luce"` is DPO's sigmoid loss.

    The reference model is chosen as in TRL's `DPOTrainer`: `ref_model` when given (a model, or a name or path loaded
    with `model_init_kwargs`); with a `peft_config` (or a `PeftModel`) and no `ref_model`, the base model with the
    adapter disabled; otherwise a frozen copy of the initial model, or, with `precompute_ref_log_probs`, the initial
    model itself before training starts. Reference log-probs go through the same fused token-level core as the
    policy's (no [T, V] logits), without gradients.

    Example:

    ```python
    >>> from datasets import load_dataset
    >>> from trl_pro import ListDPOConfig, ListDPOTrainer

    >>> dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train")
    >>> trainer = ListDPOTrainer(
    ...     model="Qwen/Qwen2.5-0.5B-Instruct", args=ListDPOConfig(loss_type="lipo_lambda"), train_dataset=dataset
    ... )
    >>> trainer.train()
    ```

    Arguments: those of [`RankingTrainer`], with `args` a [`ListDPOConfig`], plus `ref_model`
    ([`~transformers.PreTrainedModel`] or `str`, *optional*), in the place `DPOTrainer` takes it.
    """

    _tag_names = ["trl", "trl-pro", "list-dpo"]
    _name = "ListDPO"
    config_class = ListDPOConfig
    _tied_scores_hint = "With loss_type 'lipo_lambda' or 'all_pairs', tied candidates form no pair."

    def __init__(
        self,
        model: "str | PreTrainedModel",
        ref_model: "str | PreTrainedModel | None" = None,
        args: ListDPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        # Read by `_create_model`, which runs inside `RankingTrainer.__init__` before PEFT wraps the model
        self._ref_model_given = ref_model is not None
        self._peft_config_given = peft_config is not None
        self._initial_copy = None
        super().__init__(
            model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        if isinstance(ref_model, str):
            ref_model = self._create_model(ref_model, self.args, quantization_config)
        self.ref_model = self._prepare_ref_model(ref_model if ref_model is not None else self._initial_copy)
        self._initial_copy = None
        if self.args.precompute_ref_log_probs:
            self.train_dataset = self._with_ref_logps(
                self.train_dataset, "train", self.args.per_device_train_batch_size
            )
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {
                    name: self._with_ref_logps(dataset, name, self.args.per_device_eval_batch_size)
                    for name, dataset in self.eval_dataset.items()
                }
            elif self.eval_dataset is not None:
                self.eval_dataset = self._with_ref_logps(
                    self.eval_dataset, "eval", self.args.per_device_eval_batch_size
                )

    @property
    def _paper(self) -> dict:
        return _LIPO_PAPER if self.args.loss_type == "lipo_lambda" else _DPO_PAPER

    # --- The reference model -------------------------------------------------------------------------------------

    def _create_model(self, model, args: ListDPOConfig, quantization_config):
        model = super()._create_model(model, args, quantization_config)
        # The frozen copy of the initial model, when nothing else can be the reference: no `ref_model`, no adapter to
        # disable, and the reference is needed after training has started (not only to precompute)
        needs_copy = not (self._ref_model_given or self._peft_config_given or is_peft_model(model))
        if needs_copy and not args.precompute_ref_log_probs and self._initial_copy is None:
            self._initial_copy = copy.deepcopy(model)
        return model

    def _prepare_ref_model(self, ref_model: PreTrainedModel | None):
        if ref_model is None:
            return None
        ref_model.requires_grad_(False)
        ref_model.eval()
        if self.args.disable_dropout:
            disable_dropout_in_model(ref_model)
        add_ranking_loss_head(ref_model)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    def _reference_is_policy(self) -> bool:
        """Whether the reference is the policy itself (initial weights, `precompute_ref_log_probs` only)."""
        return self.ref_model is None and not is_peft_model(self.accelerator.unwrap_model(self.model))

    def compute_ref_log_probs(self, inputs) -> torch.Tensor:
        """[C] summed token log-probs of every candidate of a collated batch under the reference model."""
        if self._reference_is_policy() and self.state.global_step > 0:
            raise ValueError(
                "This batch has no precomputed reference log-probs, and the reference (the initial model, with "
                "`precompute_ref_log_probs=True` and no `ref_model`) is gone once training has started. Pass the "
                "dataset at initialisation, or give a `ref_model`."
            )
        model = self.ref_model if self.ref_model is not None else self.model
        adapter = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(unwrapped := self.accelerator.unwrap_model(self.model)):
            adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter,
            self.accelerator.autocast(),
        ):
            output = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                ranking_inputs={
                    "completion_mask": inputs["completion_mask"],
                    "segment_ids": inputs.get("segment_ids"),
                    "layout": self._layout(inputs),
                    "objective": _REFERENCE_PASS,
                    "implementation": self.args.loss_implementation,
                },
            )
        return output.logprob_sums

    def _with_ref_logps(self, dataset, name: str, batch_size: int):
        """`dataset` with a `ref_logps` column (one value per candidate), computed once and resumably.

        Each process computes the rows `process_index::num_processes`, appending each finished batch to its cache
        file in `output_dir/ref_logps/` (keyed on the reference weights, the dataset and the layout, so a stale file
        is recomputed, never read); once every process is done, all read every file."""
        if isinstance(dataset, IterableDataset):
            raise ValueError(
                "`precompute_ref_log_probs=True` needs a map-style Dataset (the log-probs are stored per row); set "
                "`precompute_ref_log_probs=False` for an IterableDataset."
            )
        if "ref_logps" in dataset.column_names:
            return dataset
        batch_size = self.args.precompute_ref_batch_size or batch_size
        reference = self.ref_model if self.ref_model is not None else self.accelerator.unwrap_model(self.model)
        key = {
            "reference": hash_module(reference),
            "dataset": dataset._fingerprint,
            "shared_prompt": getattr(self.data_collator, "shared_prompt", None),
            "loss_implementation": self.args.loss_implementation,
        }
        state = self.accelerator.state
        folder = Path(self.args.output_dir) / "ref_logps"
        paths = [folder / f"{name}.process-{p}-of-{state.num_processes}.jsonl" for p in range(state.num_processes)]
        cache = KeyedCache(paths[state.process_index], key, what="Reference log-probs")
        done = {row["index"] for row in cache.rows()}
        todo = [i for i in range(state.process_index, len(dataset), state.num_processes) if i not in done]
        was_training = self.model.training
        self.model.eval()
        try:
            for start in tqdm(
                range(0, len(todo), batch_size),
                desc=f"Computing reference log-probs ({name})",
                disable=not self.accelerator.is_local_main_process,
            ):
                indices = todo[start : start + batch_size]
                batch = self._prepare_inputs(self.data_collator([dataset[i] for i in indices]))
                sums = self.compute_ref_log_probs(batch).float().cpu()
                offsets = batch["ranking_offsets"].tolist()
                cache.append(
                    {"index": i, "ref_logps": sums[a:b].tolist()}
                    for i, a, b in zip(indices, offsets[:-1], offsets[1:])
                )
        finally:
            self.model.train(was_training)
        self.accelerator.wait_for_everyone()
        values = {row["index"]: row["ref_logps"] for path in paths for row in read_jsonl_cache(path)}
        missing = [i for i in range(len(dataset)) if i not in values]
        if missing:
            raise RuntimeError(
                f"Reference log-probs of {len(missing)} {name} rows are missing (first: row {missing[0]})."
            )
        return dataset.add_column("ref_logps", [values[i] for i in range(len(dataset))])

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if self.args.precompute_ref_log_probs and isinstance(eval_dataset, (Dataset, dict)):
            batch_size = self.args.per_device_eval_batch_size
            prepare = self._prepare_dataset
            if isinstance(eval_dataset, dict):
                eval_dataset = {
                    name: self._with_ref_logps(
                        prepare(dataset, self.processing_class, self.args, name), name, batch_size
                    )
                    for name, dataset in eval_dataset.items()
                }
            else:
                dataset = prepare(eval_dataset, self.processing_class, self.args, metric_key_prefix)
                eval_dataset = self._with_ref_logps(dataset, metric_key_prefix, batch_size)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    # --- The objective -------------------------------------------------------------------------------------------

    def _objective(self) -> ListDPOObjective:
        return ListDPOObjective(
            loss_type=self.args.loss_type, beta=self.args.beta, sft_loss_reduction=self.args.sft_loss_reduction
        )

    def _sft_weight(self, layout: RankingLayout) -> torch.Tensor:
        return torch.full((layout.num_prompts,), self.args.sft_weight, device=layout.ranking_offsets.device)

    def _uses_rewards(self, args: ListDPOConfig) -> bool:
        return LOSS_TYPES[args.loss_type][1]

    def _rewards(self, inputs) -> torch.Tensor | None:
        rewards = super()._rewards(inputs)
        if rewards is not None and self.args.reward_scale != 1.0:
            rewards = rewards * self.args.reward_scale
        return rewards

    def _extra_loss_inputs(self, inputs, layout: RankingLayout) -> dict:
        ref_logps = inputs.get("ref_logps")
        return {"ref_logps": self.compute_ref_log_probs(inputs) if ref_logps is None else ref_logps}
